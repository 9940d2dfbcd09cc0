"""What the tests and the benchmarks both need to run Crowdtune for real and check what it did.

    processes     wait_for (poll until true), kill_tree (a process and its children)
    faults        permission bits that bind even root (drop_dac_override, permissions_bind), set_read_only
    accounting    account: the exact accounting after a run (nothing lost, nothing doubled); store_settled
    sandbox_run   an online run on a sandbox face in accelerated time: real tweets, the tiny base model,
                  the face, the run's config

Tests (`tests/`) and benchmarks (`benchmarks/`) import this package; Crowdtune itself never does
(tests/test_architecture.py checks both), and benchmarks never import `tests`.
"""
