# Role nats: one of three nats-server with JetStream, clustered. The three machines are named
# nats-1, nats-2, nats-3 (cloud-init host names, resolvable by the others); each server takes
# its host name as its JetStream server name, so that one image serves all three.
{ config, lib, pkgs, ... }:

let
  peers = [ "nats-1" "nats-2" "nats-3" ];
  natsConfig = (pkgs.formats.json { }).generate "nats.conf" config.services.nats.settings;
  # The host name is read when the server starts (after cloud-init set it), not when the
  # unit is loaded, as the %H specifier would be.
  start = pkgs.writeShellScript "nats-server-start" ''
    exec ${lib.getExe' pkgs.nats-server "nats-server"} -c ${natsConfig} \
      --server_name "$(</proc/sys/kernel/hostname)"
  '';
in
{
  services.nats = {
    enable = true;
    host = "0.0.0.0";
    jetstream = true;
    settings = {
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
