"""The stages of the method, one file each, readable top to bottom like a recipe.

``data`` (prepare, references, the base model), ``sft``, ``critic``, ``hdpo``, ``evaluate`` (eval, compare) and
``pipeline`` (the whole chain, resumable, with seeds). A training stage file holds its driver (which run this is,
the data its workers read) and its worker body (load model -> strategy -> data source -> loop), written against
``context.WorkerContext``; ``distributed/launcher.py`` runs that body on Ray Train + DeepSpeed. Stages call the
Ray and DeepSpeed mechanics of ``distributed/`` but never import ``ray`` or ``deepspeed`` themselves.
"""
