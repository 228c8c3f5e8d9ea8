# NixOS module: services.chat-zinx.
#
# One node per host (`services.chat-zinx`), and further nodes on the same host as named
# instances (`services.chat-zinx.instances.<name>`). Each node is three units, as in systemd/:
# the service (Type=notify, watchdog, the same sandboxing) and two socket units that hold its
# listeners across restarts (socket activation; FileDescriptorName=chat and =http), and a
# third with `settings.tls.listen` (the TLS chat listener, FileDescriptorName=chat-tls).
#
# Configuration: `settings` is the TOML file of docs/configuration.md (typed options for the
# main keys, from ./settings.toml; any other key untyped), written to the Nix store and checked
# with `chat-zinx config --check` at build time. Secrets never go there: `environmentFile`
# (CHAT_ZINX_* variables: Redis URL with its password, Consul ACL token), `tokenSecretFile` and
# the backend secret files (`natsPasswordFile`, `redisPasswordFile`, `consulTokenFile`, ...:
# systemd credentials) are read at run time from paths outside the store.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.chat-zinx;
  inherit (lib) types mkOption;

  tomlFormat = pkgs.formats.toml { };

  # { section = { key = { type, default?, unset?, example, description, values? }; }; }
  typedSettings = lib.importTOML ./settings.toml;

  settingType = spec: {
    address = types.strMatching "(\\[[0-9A-Fa-f:.]+]|[0-9.]+):[0-9]+";
    hostport = types.strMatching "[^:/ ]+:[0-9]+|\\[[0-9A-Fa-f:.]+]:[0-9]+";
    string = types.str;
    duration = types.strMatching "[0-9].*";
    positive = types.ints.positive;
    unsigned = types.ints.unsigned;
    enum = types.enum (spec.values or [ ]);
    abspath = types.strMatching "/.*";
  }.${spec.type};

  envVar = section: key: "CHAT_ZINX_${lib.toUpper section}__${lib.toUpper key}";

  mkSettingOption = section: key: spec:
    mkOption ({
      type = if spec ? default then settingType spec else types.nullOr (settingType spec);
      default = spec.default or null;
      inherit (spec) example;
      description = spec.description + ''


        Key `${section}.${key}`; the variable `${envVar section key}` (in `environmentFile`)
        overrides it.'';
    } // lib.optionalAttrs (!(spec ? default)) {
      defaultText = lib.literalMD "`null`: left out of the file, so the daemon's default applies (${spec.unset})";
    });

  settingsType = types.submodule {
    freeformType = tomlFormat.type;
    options = lib.mapAttrs
      (section: keys: mkOption {
        type = types.submodule {
          freeformType = tomlFormat.type;
          options = lib.mapAttrs (mkSettingOption section) keys;
        };
        default = { };
        description = "The `[${section}]` section of the configuration file.";
      })
      typedSettings;
  };

  # Backend secrets handed over like `tokenSecretFile`: option -> the credential's name, the
  # daemon's key set to it, and what the file holds.
  backendSecretFiles = {
    natsCredsFile = { credential = "nats-creds"; key = "nats.creds_file"; holds = "a NATS credentials file (user JWT and NKey seed)"; };
    natsNkeyFile = { credential = "nats-nkey"; key = "nats.nkey_file"; holds = "an NKey seed"; };
    natsPasswordFile = { credential = "nats-password"; key = "nats.password_file"; holds = "the password of `settings.nats.user`"; };
    natsTokenFile = { credential = "nats-token"; key = "nats.token_file"; holds = "a NATS authentication token"; };
    redisPasswordFile = { credential = "redis-password"; key = "redis.password_file"; holds = "the Redis password (of `settings.redis.username`)"; };
    consulTokenFile = { credential = "consul-token"; key = "consul.token_file"; holds = "the Consul ACL token"; };
    # Not a backend's, but handed over the same way.
    adminTokenFile = { credential = "admin-token"; key = "admin.token_file"; holds = "the bearer token of the admin API (`chat-zinx admin`, docs/operations.md \"Admin API\")"; };
  };

  backendSecretOptions = lib.mapAttrs
    (_: secret: mkOption {
      type = types.nullOr (types.strMatching "/.*");
      default = null;
      example = "/run/secrets/chat-zinx-${secret.credential}";
      description = ''
        File holding ${secret.holds}. It is passed as the systemd credential
        `${secret.credential}` (`LoadCredential=`), so it can stay readable by root only, and
        the written configuration's `${secret.key}` points at the credential. A string, not a Nix path, so that it
        is never copied into the store. `null`: not used.
      '';
    })
    backendSecretFiles;

  # A node's `LoadCredential=` entries (name:path).
  credentials = node:
    lib.optional (node.tokenSecretFile != null) "token_secret:${node.tokenSecretFile}"
    ++ lib.optional (node.tlsCertFile != null) "tls_cert:${node.tlsCertFile}"
    ++ lib.optional (node.tlsKeyFile != null) "tls_key:${node.tlsKeyFile}"
    ++ lib.concatLists (lib.mapAttrsToList
      (option: secret: lib.optional (node.${option} != null) "${secret.credential}:${node.${option}}")
      backendSecretFiles);

  # Options shared by the main node and the named instances.
  nodeOptions = backendSecretOptions // {
    settings = mkOption {
      type = settingsType;
      default = { };
      example = lib.literalExpression ''
        {
          server.advertise_addr = "chat-1.example.com:9000";
          nats.url = "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222";
          nats.replicas = 3;
          consul.addr = "http://127.0.0.1:8500";
          protocol.rate_per_sec = 100; # untyped keys work too
        }
      '';
      description = ''
        The daemon's configuration file (docs/configuration.md), as Nix. Options left `null`
        are not written, so the daemon's defaults apply. The file is world-readable in the
        Nix store: secrets belong in `environmentFile` and `tokenSecretFile`.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the chat ports (of `settings.server.listen` and, when set, `settings.tls.listen`) in the firewall.";
    };

    environmentFile = mkOption {
      type = types.nullOr (types.strMatching "/.*");
      default = null;
      example = "/run/secrets/chat-zinx.env";
      description = ''
        A file of `CHAT_ZINX_<SECTION>__<KEY>=value` lines, read by systemd when the service
        starts (`EnvironmentFile=`), for secrets and per-host values:
        `CHAT_ZINX_REDIS__URL=redis://:password@redis:6379/0`,
        `CHAT_ZINX_CONSUL__TOKEN=...`, a NATS URL with credentials. Variables override the
        file. A string, not a Nix path, so that it is never copied into the store; keep it
        readable by root only.
      '';
    };

    tlsCertFile = mkOption {
      type = types.nullOr (types.strMatching "/.*");
      default = null;
      example = "/var/lib/acme/chat.example.com/fullchain.pem";
      description = ''
        PEM certificate chain (the node's certificate first) of the TLS listener
        (`settings.tls.listen`). Passed as a systemd credential (`LoadCredential=tls_cert`),
        and the written configuration's `tls.cert_file` points at it (so do not set
        `settings.tls.cert_file` too). A string, not a Nix path: never copied into
        the store. systemd copies credentials when the service starts, so a renewed
        certificate takes a restart (`systemctl restart`); a reload keeps the running one.
      '';
    };

    tlsKeyFile = mkOption {
      type = types.nullOr (types.strMatching "/.*");
      default = null;
      example = "/var/lib/acme/chat.example.com/key.pem";
      description = ''
        PEM private key of `tlsCertFile`, passed as a systemd credential
        (`LoadCredential=tls_key`; it can stay readable by root only); the written
        configuration's `tls.key_file` points at it (so do not set `settings.tls.key_file`).
      '';
    };

    tokenSecretFile = mkOption {
      type = types.nullOr (types.strMatching "/.*");
      default = null;
      example = "/run/secrets/chat-zinx-token-secret";
      description = ''
        File holding the secret that signs login tokens (at least 16 bytes). Every node of a
        cluster needs the same one, so that a client resumes its session on any node. It is
        passed as a systemd credential (`LoadCredential=`), so it can stay readable by root
        only, and the file the module writes gets `auth.token_secret_file` set to the
        credential (so do not set `settings.auth.token_secret_file` too). `null`: with
        `settings.nats.url` set the nodes agree on one secret through NATS JetStream (created
        by the first node to start); without NATS the node generates its own in its state
        directory.
      '';
    };
  };

  unitName = name: if name == "" then "chat-zinx" else "chat-zinx-${name}";
  credentialPath = name: "/run/credentials/${unitName name}.service/token_secret";
  credentialFile = name: credential: "/run/credentials/${unitName name}.service/${credential}";
  backendCredentialFile = name: option: credentialFile name backendSecretFiles.${option}.credential;

  hasTls = node: node.settings.tls.listen != null;

  nodes =
    lib.optionalAttrs cfg.enable { "" = cfg; }
    // lib.filterAttrs (_: node: node.enable) cfg.instances;

  portOf = address: lib.toInt (lib.last (lib.splitString ":" address));

  # Settings without the unset (null) options, as written to the file; `tokenSecretFile`,
  # `tlsCertFile` and `tlsKeyFile` become `auth.token_secret_file`, `tls.cert_file` and
  # `tls.key_file` here (not through the options, so that setting both is an assertion with a
  # message rather than a "conflicting definition values").
  fileSettings = name: node:
    lib.foldl' lib.recursiveUpdate (lib.filterAttrsRecursive (_: v: v != null) node.settings) ([
      (lib.optionalAttrs (node.tokenSecretFile != null) {
        auth.token_secret_file = credentialPath name;
      })
      (lib.optionalAttrs (node.tlsCertFile != null) {
        tls.cert_file = credentialFile name "tls_cert";
      })
      (lib.optionalAttrs (node.tlsKeyFile != null) {
        tls.key_file = credentialFile name "tls_key";
      })
    ] ++ lib.mapAttrsToList
      (option: secret: lib.optionalAttrs (node.${option} != null)
        (lib.setAttrByPath (lib.splitString "." secret.key) (backendCredentialFile name option)))
      backendSecretFiles);

  configFile = name: node:
    let
      file = tomlFormat.generate "${unitName name}.toml" (fileSettings name node);
    in
    if cfg.checkConfig && pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform then
      pkgs.runCommand "${unitName name}-checked.toml" { } ''
        ${lib.getExe node.package} config --check ${file}
        cp ${file} $out
      ''
    else file;

  sockets = name: node:
    let
      unit = unitName name;
      node' = lib.optionalString (name != "") ", node ${name}";
    in
    {
      ${unit} = {
        description = "chat-zinx chat listener${node'}";
        wantedBy = [ "sockets.target" ];
        listenStreams = [ node.settings.server.listen ];
        socketConfig = {
          FileDescriptorName = "chat";
          # Connections wait in the kernel while the daemon (re)starts.
          Backlog = 4096;
          NoDelay = true;
          Service = "${unit}.service";
        };
      };
      "${unit}-http" = {
        description = "chat-zinx HTTP listener (health, readiness, metrics)${node'}";
        wantedBy = [ "sockets.target" ];
        listenStreams = [ node.settings.server.http_listen ];
        socketConfig = {
          FileDescriptorName = "http";
          Service = "${unit}.service";
        };
      };
    }
    // lib.optionalAttrs (hasTls node) {
      "${unit}-tls" = {
        description = "chat-zinx TLS chat listener${node'}";
        wantedBy = [ "sockets.target" ];
        listenStreams = [ node.settings.tls.listen ];
        socketConfig = {
          FileDescriptorName = "chat-tls";
          Backlog = 4096;
          NoDelay = true;
          Service = "${unit}.service";
        };
      };
    };

  service = name: node:
    let
      unit = unitName name;
      socketUnits = [ "${unit}.socket" "${unit}-http.socket" ]
        ++ lib.optional (hasTls node) "${unit}-tls.socket";
    in
    {
      description = "chat-zinx chat daemon" + lib.optionalString (name != "") ", node ${name}";
      documentation = [ "file://${node.package}/share/doc/chat-zinx/configuration.md" ];
      wantedBy = [ "multi-user.target" ];
      requires = socketUnits;
      after = socketUnits ++ [ "network-online.target" ];
      wants = [ "network-online.target" ];
      # `nixos-rebuild switch` restarts a changed service in place instead of stopping it and
      # its sockets (the default for a socket-activated unit): the listening sockets stay
      # open, so clients queue in the kernel while the new daemon starts.
      stopIfChanged = false;
      # Keep retrying while a backend (NATS, Redis, Consul) is down.
      unitConfig.StartLimitIntervalSec = 0;
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${lib.getExe node.package} --config ${configFile name node} serve";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Sockets = socketUnits;
        # READY=1 comes once the listeners are open and every backend answers.
        TimeoutStartSec = lib.mkDefault "90s";
        # The daemon pings every WatchdogSec/2 while its accept loop and backends answer.
        WatchdogSec = lib.mkDefault "30s";
        Restart = "on-failure";
        RestartSec = lib.mkDefault "5s";
        # Exit code 2 is a configuration error: restarting does not fix it.
        RestartPreventExitStatus = 2;
        # server.drain_window (10s) + protocol.write_timeout (10s, the last flush) + the
        # daemon's 5s stop margin + 5s; raise it with the drain window.
        TimeoutStopSec = lib.mkDefault "30s";
        KillMode = "mixed";

        DynamicUser = true;
        StateDirectory = unit;
        StateDirectoryMode = "0700";
        RuntimeDirectory = unit;
        LimitNOFILE = lib.mkDefault 1048576;
        UMask = "0077";

        # The same sandboxing as systemd/chat-zinx.service: its sockets, outgoing TCP to
        # NATS, Redis and Consul, its state directory, and nothing else.
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        NoNewPrivileges = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateUsers = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        ProtectHostname = true;
        ProtectClock = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RemoveIPC = true;
        PrivateMounts = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        KeyringMode = "private";
        DevicePolicy = "closed";
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
        SystemCallErrorNumber = "EPERM";
      }
      // lib.optionalAttrs (node.environmentFile != null) {
        EnvironmentFile = node.environmentFile;
      }
      // lib.optionalAttrs (credentials node != [ ]) {
        LoadCredential = credentials node;
      };
    };

  nodeAssertions = name: node:
    let
      where = "services.chat-zinx" + lib.optionalString (name != "") ".instances.${name}";
      redisUrl = node.settings.redis.url;
      natsUrl = node.settings.nats.url;
      # A URL (or a comma-separated list of them) with credentials: scheme://user:password@...,
      # scheme://:password@... or (NATS) scheme://token@...
      hasPassword = url: url != null && builtins.match "(.*,)?[^/,]*//[^/@,]+@.*" url != null;
    in
    [
      {
        assertion = !(node.settings ? consul && node.settings.consul ? token);
        message = "${where}.settings.consul.token would put the Consul ACL token in the world-readable Nix store: set CHAT_ZINX_CONSUL__TOKEN in ${where}.environmentFile instead.";
      }
      {
        assertion = !hasPassword redisUrl;
        message = "${where}.settings.redis.url contains a password, which would land in the world-readable Nix store: set CHAT_ZINX_REDIS__URL in ${where}.environmentFile instead.";
      }
      {
        assertion = !hasPassword natsUrl;
        message = "${where}.settings.nats.url contains credentials (user:password@ or token@), which would land in the world-readable Nix store: set CHAT_ZINX_NATS__URL in ${where}.environmentFile instead.";
      }
      {
        assertion = node.tokenSecretFile == null || node.settings.auth.token_secret_file == null;
        message = "${where}: set either tokenSecretFile (the module hands the file to the service as a systemd credential and points auth.token_secret_file at it) or settings.auth.token_secret_file, not both: remove settings.auth.token_secret_file.";
      }
      {
        assertion = name == "" || (builtins.match "[A-Za-z0-9_]+(-[A-Za-z0-9_]+)*" name != null && !lib.hasSuffix "http" name);
        message = "services.chat-zinx.instances.${name}: instance names are letters, digits, `_` and inner `-`, and do not end in `http` (the unit names chat-zinx-<name>.service, chat-zinx-<name>-http.socket must not collide).";
      }
      {
        assertion = name == "" || !lib.hasSuffix "tls" name;
        message = "services.chat-zinx.instances.${name}: instance names do not end in `tls` (chat-zinx-<name>-tls.socket is the TLS socket of instance <name>).";
      }
      {
        assertion = !(hasTls node) || ((node.tlsCertFile != null || node.settings.tls.cert_file != null) && (node.tlsKeyFile != null || node.settings.tls.key_file != null));
        message = "${where}.settings.tls.listen needs a certificate: set ${where}.tlsCertFile and ${where}.tlsKeyFile.";
      }
      {
        assertion = (node.tlsCertFile == null || node.settings.tls.cert_file == null) && (node.tlsKeyFile == null || node.settings.tls.key_file == null);
        message = "${where}: set either tlsCertFile and tlsKeyFile (handed to the service as systemd credentials) or settings.tls.cert_file and settings.tls.key_file, not both: remove the settings.";
      }
    ] ++ lib.mapAttrsToList
      (option: secret: {
        assertion = node.${option} == null || lib.attrByPath (lib.splitString "." secret.key) null node.settings == null;
        message = "${where}: set either ${option} (handed to the service as a systemd credential) or settings.${secret.key}, not both: remove settings.${secret.key}.";
      })
      backendSecretFiles;

  listenAddresses = lib.concatLists (lib.mapAttrsToList
    (_: node: [ node.settings.server.listen node.settings.server.http_listen ]
      ++ lib.optional (hasTls node) node.settings.tls.listen)
    nodes);
in
{
  options.services.chat-zinx = nodeOptions // {
    enable = lib.mkEnableOption "the chat-zinx chat daemon (units chat-zinx.service, chat-zinx.socket, chat-zinx-http.socket)";

    package = mkOption {
      type = types.package;
      # From the system's pkgs, so that overlays apply: pkgs.chat-zinx where an overlay (this
      # flake's overlays.default, or the user's) provides it, else built from this checkout
      # with the system's own nixpkgs.
      default = pkgs.chat-zinx or (pkgs.callPackage ./package.nix { });
      defaultText = lib.literalExpression "pkgs.chat-zinx or (pkgs.callPackage ./nix/package.nix { })";
      description = "The chat-zinx package (the daemon and its client).";
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Check every generated configuration file with `chat-zinx config --check` at build
        time, so that a bad key or value fails the build rather than the service. Skipped
        when cross-compiling.
      '';
    };

    instances = mkOption {
      default = { };
      example = lib.literalExpression ''
        {
          a.settings.server.listen = "0.0.0.0:9001";
          a.settings.server.http_listen = "127.0.0.1:9101";
          b.settings.server.listen = "0.0.0.0:9002";
          b.settings.server.http_listen = "127.0.0.1:9102";
        }
      '';
      description = ''
        Further nodes on this host, each with its own units (chat-zinx-<name>.service,
        .socket, -http.socket), state directory (/var/lib/chat-zinx-<name>) and settings;
        give each its own `server.listen` and `server.http_listen`.
      '';
      type = types.attrsOf (types.submodule {
        options = nodeOptions // {
          enable = lib.mkEnableOption "this chat-zinx node" // { default = true; };
          package = mkOption {
            type = types.package;
            default = cfg.package;
            defaultText = lib.literalExpression "config.services.chat-zinx.package";
            description = "The chat-zinx package of this node.";
          };
        };
      });
    };
  };

  config = {
    assertions = lib.concatLists (lib.mapAttrsToList nodeAssertions nodes) ++ [
      {
        assertion = lib.allUnique listenAddresses;
        message = "services.chat-zinx: two nodes on this host share a listen address (settings.server.listen / http_listen): ${toString listenAddresses}";
      }
    ];

    systemd.sockets = lib.mkMerge (lib.mapAttrsToList sockets nodes);
    systemd.services = lib.mapAttrs' (name: node: lib.nameValuePair (unitName name) (service name node)) nodes;

    networking.firewall.allowedTCPPorts = lib.concatLists (lib.mapAttrsToList
      (_: node: lib.optionals node.openFirewall ([ (portOf node.settings.server.listen) ]
        ++ lib.optional (hasTls node) (portOf node.settings.tls.listen)))
      nodes);

    # The client (`chat-zinx client`) and `chat-zinx config --check` on the PATH.
    environment.systemPackages = lib.mkIf (nodes != { }) (lib.unique (lib.mapAttrsToList (_: node: node.package) nodes));
  };
}
