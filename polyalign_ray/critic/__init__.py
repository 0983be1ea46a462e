"""The critic (METHOD.md section 4): a small model that estimates a response's distance to the human support of its
bucket from the text and the bucket, trained on human and model answers, served by a Ray actor pool."""
