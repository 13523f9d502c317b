"""Baseline policies for the simulators, each following the ``Policy`` protocol of ``mdt4rec_core.envs.policies``:

- ``replay.LoggedReplayPolicy``: the behaviour policy of the logs (replays logged users' actions in time order);
- ``sasrec.SASRecPolicy``: a SASRec-style supervised next-item model (``train_sasrec``, ``held_out_cross_entropy``);
- ``offline_rl.QPolicy``: d3rlpy DiscreteCQL / DiscreteBCQ on average-of-recent-items states (``train_offline_rl``).

``logs`` turns a steps frame into per-user action sequences for the first two.
"""
