# checks.<system>.module: the NixOS module in a small configuration (a node and a named
# instance), evaluated and built without booting anything. Its assertions hold (and fire on a
# secret in `settings`), and the generated units and configuration files (checked by
# `chat-zinx config --check` while they build) say what they should.
{ pkgs, chatZinxModule }:

let
  inherit (pkgs) lib;

  eval = module: (import (pkgs.path + "/nixos/lib/eval-config.nix") {
    system = null;
    modules = [
      chatZinxModule
      {
        nixpkgs.pkgs = pkgs;
        boot.isContainer = true;
        system.stateVersion = lib.trivial.release;
      }
      module
    ];
  }).config;

  failedAssertions = config: map (a: a.message)
    (builtins.filter (a: !a.assertion && lib.hasInfix "chat-zinx" a.message) config.assertions);

  config = eval {
    services.chat-zinx = {
      enable = true;
      openFirewall = true;
      settings.server.advertise_addr = "chat-1.example.com:9000";
      # An untyped key of the configuration contract.
      settings.protocol.rate_per_sec = 100;
      environmentFile = "/run/secrets/chat-zinx.env";
      tokenSecretFile = "/run/secrets/chat-zinx-token-secret";
      settings.tls.listen = "0.0.0.0:9443";
      tlsCertFile = "/run/secrets/chat-zinx-tls-cert.pem";
      tlsKeyFile = "/run/secrets/chat-zinx-tls-key.pem";
      redisPasswordFile = "/run/secrets/chat-zinx-redis-password";
      instances.b.consulTokenFile = "/run/secrets/chat-zinx-b-consul-token";
      instances.b.settings.server.listen = "0.0.0.0:9002";
      instances.b.settings.server.http_listen = "127.0.0.1:9102";
    };
  };

  withSecretInStore = eval {
    services.chat-zinx = {
      enable = true;
      settings.consul.token = "not-in-the-store";
    };
  };

  # The package default is taken from the system's pkgs, so an overlay applies.
  withOverlay = eval {
    nixpkgs.pkgs = lib.mkForce (pkgs.extend (_final: prev: { chat-zinx = prev.hello; }));
    services.chat-zinx.enable = true;
  };

  withNatsPassword = eval {
    services.chat-zinx = {
      enable = true;
      settings.nats.url = "nats://n1:4222,nats://chat:not-in-the-store@n2:4222";
    };
  };

  withTwoSecretFiles = eval {
    services.chat-zinx = {
      enable = true;
      tokenSecretFile = "/run/secrets/chat-zinx-token-secret";
      settings.auth.token_secret_file = "/var/lib/chat-zinx/token_secret";
    };
  };

  units = [
    "chat-zinx.service"
    "chat-zinx.socket"
    "chat-zinx-http.socket"
    "chat-zinx-tls.socket"
    "chat-zinx-b.service"
    "chat-zinx-b.socket"
    "chat-zinx-b-http.socket"
  ];
  unitFile = name: "${config.systemd.units.${name}.unit}/${name}";
in
assert lib.assertMsg (failedAssertions config == [ ])
  (lib.concatStringsSep "\n" (failedAssertions config));
assert lib.assertMsg (failedAssertions withSecretInStore != [ ])
  "settings.consul.token must be refused";
assert lib.assertMsg (lib.getName withOverlay.services.chat-zinx.package == "hello")
  "the package default is pkgs.chat-zinx of the system's pkgs (overlays apply)";
assert lib.assertMsg (failedAssertions withNatsPassword != [ ])
  "a password in settings.nats.url must be refused";
assert lib.assertMsg (lib.any (lib.hasInfix "not both") (failedAssertions withTwoSecretFiles))
  "tokenSecretFile with settings.auth.token_secret_file must be an assertion, not a conflict";
assert lib.assertMsg (builtins.elem 9000 config.networking.firewall.allowedTCPPorts)
  "openFirewall opens the chat port";
assert lib.assertMsg (builtins.elem 9443 config.networking.firewall.allowedTCPPorts)
  "openFirewall opens the TLS chat port";
assert lib.assertMsg (!(config.systemd.sockets ? "chat-zinx-b-tls"))
  "a node without settings.tls.listen has no TLS socket";

pkgs.runCommand "chat-zinx-module-check" { } ''
  set -eu
  expect() { grep -qxF -- "$2" "$1" || { echo "$1 lacks the line: $2" >&2; cat "$1" >&2; exit 1; }; }

  expect ${unitFile "chat-zinx.socket"} "ListenStream=0.0.0.0:9000"
  expect ${unitFile "chat-zinx.socket"} "FileDescriptorName=chat"
  expect ${unitFile "chat-zinx-http.socket"} "ListenStream=127.0.0.1:9100"
  expect ${unitFile "chat-zinx-http.socket"} "FileDescriptorName=http"
  expect ${unitFile "chat-zinx-b.socket"} "ListenStream=0.0.0.0:9002"
  expect ${unitFile "chat-zinx-b-http.socket"} "Service=chat-zinx-b.service"
  expect ${unitFile "chat-zinx-tls.socket"} "ListenStream=0.0.0.0:9443"
  expect ${unitFile "chat-zinx-tls.socket"} "FileDescriptorName=chat-tls"
  expect ${unitFile "chat-zinx-tls.socket"} "Service=chat-zinx.service"

  service=${unitFile "chat-zinx.service"}
  expect $service "Type=notify"
  expect $service "WatchdogSec=30s"
  expect $service "DynamicUser=true"
  expect $service "StateDirectory=chat-zinx"
  expect $service "EnvironmentFile=/run/secrets/chat-zinx.env"
  expect $service "LoadCredential=token_secret:/run/secrets/chat-zinx-token-secret"
  # nixos-rebuild switch restarts the service in place: its sockets stay open.
  expect $service "X-StopIfChanged=false"
  expect $service "LoadCredential=tls_cert:/run/secrets/chat-zinx-tls-cert.pem"
  expect $service "LoadCredential=tls_key:/run/secrets/chat-zinx-tls-key.pem"
  expect $service "Sockets=chat-zinx-tls.socket"
  expect $service "LoadCredential=redis-password:/run/secrets/chat-zinx-redis-password"
  expect ${unitFile "chat-zinx-b.service"} "StateDirectory=chat-zinx-b"
  expect ${unitFile "chat-zinx-b.service"} "LoadCredential=consul-token:/run/secrets/chat-zinx-b-consul-token"

  config=$(sed -n 's/^ExecStart=.* --config \([^ ]*\) serve$/\1/p' $service)
  expect $config 'token_secret_file = "/run/credentials/chat-zinx.service/token_secret"'
  expect $config 'cert_file = "/run/credentials/chat-zinx.service/tls_cert"'
  expect $config 'key_file = "/run/credentials/chat-zinx.service/tls_key"'
  expect $config 'advertise_addr = "chat-1.example.com:9000"'
  expect $config 'rate_per_sec = 100'
  expect $config 'password_file = "/run/credentials/chat-zinx.service/redis-password"'

  mkdir $out
  ${lib.concatMapStrings (name: "cp ${unitFile name} $out/\n") units}
  cp $config $out/chat-zinx.toml
''
