# `nix develop`: the Rust toolchain of the package, the test runner and the servers the
# integration tests start (scripts/test; src/harness), and the Nix tools.
{ mkShell, chat-zinx, clippy, rustfmt, rust-analyzer, cargo-nextest, nats-server, redis, consul, systemd, deadnix, nixfmt, python3 }:

mkShell {
  inputsFrom = [ chat-zinx ];
  packages = [
    clippy
    rustfmt
    rust-analyzer
    cargo-nextest
    # Live servers of the integration tests.
    nats-server
    redis
    consul
    # systemd-analyze and systemd-socket-activate (tests/systemd.rs, scripts/check-systemd-units).
    systemd
    # scripts/check-nix.
    deadnix
    nixfmt
    python3.pkgs.pyflakes
  ];
}
