# Role nats: one of three nats-server with JetStream, clustered. The three machines are named
# nats-1, nats-2, nats-3 (cloud-init host names, resolvable by the others); each server takes
# its host name as its JetStream server name, so that one image serves all three.
{ config, lib, pkgs, ... }:

let
  peers = [ "nats-1" "nats-2" "nats-3" ];
  natsConfig = (pkgs.formats.json { }).generate "nats.conf" config.services.nats.settings;
  # The host name is read when the server starts (after cloud-init set it), not when the
  # unit is loaded, as the %H specifier would be. It comes from uname(2) (the UTS namespace
  # ProtectHostname= gives the unit is a copy of the host's at start), not from
  # /proc/sys/kernel/hostname, which the upstream unit's ProcSubset=pid hides. A name that is
  # not one of the peers would make a fourth, unrouted member: refuse it.
  start = pkgs.writeShellScript "nats-server-start" ''
    name="$(${pkgs.coreutils}/bin/uname -n)"
    case "$name" in
      ${lib.concatStringsSep "|" peers}) ;;
      *)
        echo "nats-server-start: this host is named '$name', not one of ${toString peers}:" \
          "set the host name in the machine's cloud-init user data (hostname:) and reboot" >&2
        exit 1
        ;;
    esac
    exec ${lib.getExe' pkgs.nats-server "nats-server"} -c ${natsConfig} --server_name "$name"
  '';
in
{
  services.nats = {
    enable = true;
    jetstream = true;
    settings = {
      # The nixos-25.11 module declares no `host` option (nix/README.md): the listen address
      # goes in the settings, as in nats-server's own configuration file.
      host = "0.0.0.0";
      http = "127.0.0.1:8222";
      cluster = {
        name = "chat-zinx";
        listen = "0.0.0.0:6222";
        routes = map (peer: "nats://${peer}:6222") peers;
      };
    };
  };
  systemd.services.nats = {
    after = [ "cloud-init.service" ];
    wants = [ "cloud-init.service" ];
    serviceConfig.ExecStart = lib.mkForce "${start}";
  };

  networking.firewall.allowedTCPPorts = [ 4222 6222 ];
}
