# chat-zinx, built from this checkout with the dependencies of Cargo.lock (no vendor hash).
{ lib, rustPlatform, coreutils }:

let
  cargoToml = lib.importTOML ../Cargo.toml;

  # Integration tests (one test binary each) that cannot run in the build sandbox,
  # with the reason. The rest run in checkPhase.
  # A target is a file tests/NAME.rs or a directory tests/NAME/ with a main.rs (its modules
  # beside it); directories without one (support/, http_client/) are shared modules.
  testEntries = builtins.readDir ../tests;
  testTargets =
    map (lib.removeSuffix ".rs")
      (builtins.attrNames (lib.filterAttrs
        (name: kind: kind == "regular" && lib.hasSuffix ".rs" name)
        testEntries))
    ++ builtins.filter
      (name: testEntries.${name} == "directory" && builtins.pathExists (../tests + "/${name}/main.rs"))
      (builtins.attrNames testEntries);
  testSource = target:
    if builtins.pathExists (../tests + "/${target}.rs")
    then ../tests + "/${target}.rs"
    else ../tests + "/${target}/main.rs";
  startsServers = target: lib.hasInfix "harness::" (builtins.readFile (testSource target));
  skippedTests =
    lib.genAttrs (builtins.filter startsServers testTargets)
      (_:
        "starts nats-server, redis-server, consul or haproxy (src/harness): the sandbox has none "
        + "of them (consul is unfree); scripts/test runs it, and checks.x86_64-linux.cluster covers "
        + "the backends end to end")
    // lib.optionalAttrs (builtins.elem "bench_smoke" testTargets) {
      bench_smoke = "runs `chat-zinx bench`, which starts nats-server and redis-server through "
      + "src/harness: the sandbox has neither; scripts/test runs it";
    }
    // lib.optionalAttrs (builtins.elem "nix_module_keys" testTargets) {
      nix_module_keys = "reads flake.nix and nix/, which are not in the package's source (editing "
      + "them does not rebuild the package); scripts/test runs it, checks.<system>.module "
      + "evaluates the module";
    }
    // lib.optionalAttrs (builtins.elem "systemd" testTargets) {
      systemd = "runs the daemon under systemd-socket-activate, which is not in the sandbox; "
      + "checks.x86_64-linux.cluster runs it under a real systemd";
    };
  runTests = builtins.filter (target: !(skippedTests ? ${target})) testTargets;
in
rustPlatform.buildRustPackage {
  pname = cargoToml.package.name;
  inherit (cargoToml.package) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../tests
      ../systemd
      ../docs
      # Read by tests/docs.rs.
      ../README.md
      ../.ci/run
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # Unit tests, the binary's tests and the integration tests that need no live server.
  cargoTestFlags = [ "--lib" "--bins" ] ++ map (target: "--test=${target}") runTests;
  preCheck = lib.concatStrings (lib.mapAttrsToList
    (target: reason: ''
      echo "skipping tests/${target}.rs: ${reason}"
    '')
    skippedTests);

  postInstall = ''
    install -Dm0644 -t $out/lib/systemd/system systemd/*.service systemd/*.socket
    substituteInPlace $out/lib/systemd/system/*.service \
      --replace-fail /usr/local/bin/chat-zinx $out/bin/chat-zinx \
      --replace-fail /bin/kill ${coreutils}/bin/kill
    install -Dm0644 -t $out/share/doc/chat-zinx README.md docs/*.md docs/config.example.toml
  '';

  meta = {
    inherit (cargoToml.package) description;
    license = lib.licenses.mit;
    mainProgram = "chat-zinx";
    platforms = lib.platforms.linux;
  };
}
