# checks.x86_64-linux.cluster: the project's end-to-end proof on a real systemd.
#
# Three NATS servers (JetStream, clustered), one Consul server, Redis, two chat nodes
# (services.chat-zinx: socket activation, Type=notify, watchdog, the hardened unit), the load
# balancer (the lb image's role: HAProxy on deploy/haproxy/haproxy.cfg, nodes from Consul's
# DNS) and a client machine. The script (cluster.py) checks Consul registration, a direct
# message and a group message across the two nodes with `chat-zinx client --json`, a client
# chatting over TLS (the nodes' TLS listeners, certificates of a test CA), v1 clients
# (`--v1`, the original client's frames) chatting through the load balancer (which sends the
# PROXY protocol: the nodes log the client machine's address, not the balancer's), then stops one
# chat node and sees its users resume their sessions on the other and new v1 connections
# through the load balancer go to the other node only.
#
# Run: nix build .#checks.x86_64-linux.cluster -L (needs KVM); interactively:
#   nix run .#checks.x86_64-linux.cluster.driverInteractive
{ pkgs, chatZinxModule }:

let
  inherit (pkgs) lib;

  natsNames = [ "nats1" "nats2" "nats3" ];

  # Test-only secrets. They are in the Nix store, which is fine for a throw-away VM and for
  # nothing else: on real hosts these files come from a secret manager (see the README).
  redisPassword = "test-only-redis-password";
  redisPasswordFile = pkgs.writeText "redis-password" redisPassword;
  chatEnvironment = pkgs.writeText "chat-zinx.env" ''
    CHAT_ZINX_REDIS__URL=redis://:${redisPassword}@redis:6379/0
  '';
  tokenSecret = pkgs.writeText "chat-zinx-token-secret" "test-only-token-secret-0123456789abcdef";
  # A test CA and a certificate per chat node (for its host name), made at build time: keys in
  # the store are for this throw-away VM only.
  testPki = pkgs.runCommand "chat-zinx-test-pki" { nativeBuildInputs = [ pkgs.openssl ]; } ''
    mkdir $out
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=chat-zinx test CA" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout ca.key -out $out/ca.pem
    for n in chat1 chat2; do
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$n" \
        -keyout $out/$n.key -out $n.csr
      printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$n" > $n.ext
      openssl x509 -req -in $n.csr -CA $out/ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile $n.ext -out $out/$n.pem
    done
  '';

  natsNode = name: {
    services.nats = {
      enable = true;
      serverName = name;
      jetstream = true;
      settings = {
        # No `host` option in the nixos-25.11 module: the listen address is a setting.
        host = "0.0.0.0";
        # Monitoring endpoint (/healthz, /jsz), loopback only.
        http = "127.0.0.1:8222";
        cluster = {
          name = "chat-zinx";
          listen = "0.0.0.0:6222";
          # A route to itself is recognised and dropped by nats-server.
          routes = map (peer: "nats://${peer}:6222") natsNames;
        };
      };
    };
    networking.firewall.allowedTCPPorts = [ 4222 6222 ];
    environment.systemPackages = [ pkgs.curl ];
  };

  chatNode = name: { config, nodes, ... }: {
    imports = [ chatZinxModule ];
    services.chat-zinx = {
      enable = true;
      openFirewall = true;
      settings.server.node_id = name;
      # An IP address, as the Terraform env advertises: the load balancer takes the nodes from
      # Consul's SRV records and cannot resolve a host name there.
      settings.server.advertise_addr = "${config.networking.primaryIPAddress}:9000";
      settings.nats.url = lib.concatMapStringsSep "," (peer: "nats://${peer}:4222") natsNames;
      settings.nats.replicas = 3;
      settings.consul.addr = "http://consul:8500";
      settings.log.level = "info,chat_zinx=debug";
      # The load balancer sends the PROXY protocol (send-proxy-v2): trust it, so that the node
      # sees each client's address, not the balancer's.
      settings.server.proxy_protocol_from = [ nodes.lb.networking.primaryIPAddress ];
      # The Redis URL carries the password: from the environment file, not the store.
      environmentFile = "${chatEnvironment}";
      # One token secret for both nodes, so that sessions resume across them.
      tokenSecretFile = "${tokenSecret}";
      # The TLS listener beside the plain one (socket chat-zinx-tls.socket).
      settings.tls.listen = "0.0.0.0:9443";
      tlsCertFile = "${testPki}/${name}.pem";
      tlsKeyFile = "${testPki}/${name}.key";
    };
    virtualisation.memorySize = 1024;
    environment.systemPackages = [ pkgs.curl ];
  };
in
pkgs.testers.runNixOSTest {
  name = "chat-zinx-cluster";

  nodes = {
    nats1 = natsNode "nats1";
    nats2 = natsNode "nats2";
    nats3 = natsNode "nats3";

    consul = { config, ... }: {
      services.consul = {
        enable = true;
        extraConfig = {
          server = true;
          bootstrap_expect = 1;
          # The VM has two interfaces: bind to the test network's.
          bind_addr = config.networking.primaryIPAddress;
          client_addr = "0.0.0.0";
          # As the consul image: the load balancer's DNS answers hold passing nodes only.
          dns_config.only_passing = true;
        };
      };
      networking.firewall.allowedTCPPorts = [ 8500 8600 ];
      networking.firewall.allowedUDPPorts = [ 8600 ];
      environment.systemPackages = [ pkgs.curl ];
    };

    redis = {
      services.redis.servers."" = {
        enable = true;
        bind = null;
        port = 6379;
        openFirewall = true;
        requirePassFile = "${redisPasswordFile}";
      };
    };

    chat1 = chatNode "chat1";
    chat2 = chatNode "chat2";

    # The lb role of the images, as it is (HAProxy on port 9000; Consul's DNS at consul:8600),
    # with socat for haproxy's runtime API.
    lb = {
      imports = [ ../images/lb.nix ];
      environment.systemPackages = [ pkgs.socat ];
    };

    client = {
      environment.systemPackages = [ pkgs.chat-zinx ];
      # What `chat-zinx client --tls --ca` trusts.
      environment.etc."chat-zinx-test-ca.pem".source = "${testPki}/ca.pem";
    };
  };

  testScript = builtins.readFile ./cluster.py;
}
