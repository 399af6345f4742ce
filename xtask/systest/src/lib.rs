//! sg's privileged tests live in `tests/`, one target per area (agent_*, dataplane_*, e2e_*,
//! ebpf_load, hardening_*, lab_services, netns_harness, bench_smoke). They need root, network
//! namespaces and BPF: `cargo xtask test` runs them, and each fails, never skips, when it
//! cannot run. The unprivileged tests are sg-agent's own (`cargo test`, any user).
