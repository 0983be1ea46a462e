"""A multi-node run on one machine, in its own process (the test session's Ray instance stays as it is):
``ray.cluster_utils.Cluster`` starts a head without CPUs (the driver and Ray Train's controller live there) and two
worker nodes with one CPU each, so the two SFT workers land on different nodes. At step 8 every rank holds
(``sft.hold_at_step``); the node of rank 1 is removed and a fresh one added; Ray Train restarts the group from the
last checkpoint under ``storage_path`` (the run folder stands for shared storage) and the run completes. With a
critic bundle, online HDPO then runs from that SFT model with a third node added: Train workers, the rollout
generator and the critic actor on different nodes; then once more, losing the actors' node at step 2 while
rollouts are in flight (a fresh node is added; Ray restarts the actors there and re-executes their calls).

    python -m tests.ray.multinode_run DATA_DIR OUT_DIR [CRITIC_DIR]     # writes OUT_DIR/multinode.json
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

HOLD_STEP = 8


def main(data_dir: Path, out: Path, online_critic: Path | None = None) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from polyalign_ray.stages.hdpo import run_hdpo_stage
    from polyalign_ray.stages.sft import run_sft_stage
    from tests.ray.tiny_run import sft_config

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "object_store_memory": 128 * 2**20,
            # A removed node is declared dead after health_check_failure_threshold missed checks, one every
            # health_check_period_ms: Ray's 5 x 3 s made the two node losses wait ~30 s in all. 4 x 1 s still
            # lets a live raylet on this loaded 2-core machine miss answers for 4 s (2 s each) before it counts
            # as dead; the test took 147 s in the suite before, 99 s alone with 3 x 0.5 s.
            "_system_config": {
                "health_check_period_ms": 1000,
                "health_check_timeout_ms": 2000,
                "health_check_failure_threshold": 4,
            },
        },
    )
    workers = [cluster.add_node(num_cpus=1, object_store_memory=128 * 2**20) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    events: dict[str, object] = {"head": ray.get_runtime_context().get_node_id()}
    run = out / "sft"

    outcome: dict[str, object] = {}

    def train() -> None:
        """The run, in a thread: the main thread must start the new node (Ray's node start sets signal handlers)."""
        try:
            outcome["summary"] = run_sft_stage(
                sft_config(
                    data_dir,
                    run,
                    "sft.zero_stage=2",
                    "sft.checkpoint_every=3",
                    f"sft.hold_at_step={HOLD_STEP}",
                    "sft.max_failures=2",
                    "sft.cpus_per_worker=1",  # one worker per 1-CPU node
                    "sft.torch_threads=1",
                )
            )
        except BaseException as error:  # reported through multinode.json; the test fails on it
            outcome["error"] = repr(error)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    try:
        # When the ranks hold at step 8: remove rank 1's node, add a fresh one, release the ranks.
        while not (run / f".held_at_step_{HOLD_STEP}").exists() and trainer.is_alive():
            time.sleep(0.05)
        try:
            started = [json.loads(line) for line in (run / "workers.jsonl").read_text().splitlines()]
            doomed_id = next(w["node_id"] for w in started if w["rank"] == 1)
            doomed = next(n for n in workers if n.node_id == doomed_id)
            cluster.remove_node(doomed, allow_graceful=False)
            events["removed"] = doomed_id
            events["added"] = cluster.add_node(num_cpus=1, object_store_memory=128 * 2**20).node_id
        finally:  # never leave the ranks held
            (run / f".release_step_{HOLD_STEP}").touch()
        trainer.join(timeout=480)
        if "summary" in outcome and online_critic is not None:
            # Online HDPO on the same cluster plus a third 1-CPU node: the two Train workers take two nodes
            # whole, so the rollout generator and the critic actor (half a CPU each) must run on the third.
            events["online_node"] = cluster.add_node(num_cpus=1, object_store_memory=128 * 2**20).node_id

            def online(folder: str, *extra: str) -> None:
                try:
                    outcome[folder] = run_hdpo_stage(
                        sft_config(
                            data_dir,
                            run,
                            f"critic.output_dir={online_critic}",
                            f"hdpo.output_dir={out / folder}",
                            "hdpo.mode=online",
                            "hdpo.max_steps=4",
                            "hdpo.log_every=1",
                            "hdpo.micro_batch_size=2",
                            "hdpo.lr=0.002",
                            "hdpo.warmup_steps=1",
                            "hdpo.zero_stage=2",
                            "hdpo.cpus_per_worker=1",
                            "hdpo.torch_threads=1",
                            "hdpo.online.rollouts_per_prompt=2",
                            "hdpo.online.pair_margin=0.0",
                            "hdpo.online.generator_cpus=0.5",
                            "critic.num_actors=1",
                            "critic.actor_num_cpus=0.5",
                            "generation.max_new_tokens=32",
                            *extra,
                        )
                    )
                except BaseException as error:
                    outcome["error"] = repr(error)

            online("hdpo")
            # The same run again, and at step 2 the node of the generator and the critic actor is removed while
            # rollouts are in flight; Ray restarts both actors on a fresh node and re-executes their calls.
            hit = out / "hdpo_hit"
            runner = threading.Thread(target=online, args=("hdpo_hit", "hdpo.hold_at_step=2"), daemon=True)
            runner.start()
            while not (hit / ".held_at_step_2").exists() and runner.is_alive():
                time.sleep(0.05)
            try:
                trainers = {
                    json.loads(line)["node_id"] for line in (hit / "workers.jsonl").read_text().splitlines()
                }
                alive = [n for n in cluster.worker_nodes if n.node_id not in trainers]
                (actors_node,) = alive
                cluster.remove_node(actors_node, allow_graceful=False)
                events["actors_node_removed"] = actors_node.node_id
                events["actors_node_added"] = cluster.add_node(
                    num_cpus=1, object_store_memory=128 * 2**20
                ).node_id
            finally:
                (hit / ".release_step_2").touch()
            runner.join(timeout=300)
    finally:
        ray.shutdown()
        cluster.shutdown()
    summary = outcome.get("summary")
    (out / "multinode.json").write_text(
        json.dumps(
            {
                "summary": summary,
                "online": outcome.get("hdpo"),
                "online_hit": outcome.get("hdpo_hit"),
                "error": outcome.get("error"),
                "events": events,
                "first_nodes": [w.node_id for w in workers],
            }
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
