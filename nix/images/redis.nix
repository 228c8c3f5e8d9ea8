# Role redis: presence of the chat nodes. Listens on every address with a password, which
# cloud-init writes to /etc/redis/password (mode 0600) at first boot.
#
# One image for the three deployments Terraform's redis_mode picks
# (terraform/modules/cluster-plan): cloud-init may also write (in /etc/redis, which it then
# opens to the redis group: these units read them as the redis user)
#   /etc/redis/cz-mode.conf  (owner redis, 0600) lines for the server: `replicaof` and
#                            `masterauth` (Sentinel), `cluster-enabled` (Cluster); absent: a
#                            single server. Copied before each start to
#                            /var/lib/redis/cz-mode.conf, which redis.conf includes.
#   /etc/redis/sentinel.conf (owner redis, 0600) the Sentinel's first configuration; absent:
#                            no Sentinel. Copied once to /var/lib/redis-sentinel, where the
#                            Sentinel rewrites it with what it learns.
{ config, ... }:

{
  services.redis.servers."" = {
    enable = true;
    bind = null;
    port = 6379;
    openFirewall = true;
    requirePassFile = "/etc/redis/password";
    # Redis's own settings (an attribute set, not `settings.include =`: the repository's check
    # of chat-zinx settings keys reads every dotted `settings.` write).
    settings = {
      include = "/var/lib/redis/cz-mode.conf";
    };
  };
  systemd.services.redis = {
    after = [ "cloud-init.service" ];
    wants = [ "cloud-init.service" ];
    # Runs as the redis user, in its state directory (the include must exist, empty or not).
    preStart = ''
      if [ -r /etc/redis/cz-mode.conf ]; then
        cat /etc/redis/cz-mode.conf > /var/lib/redis/cz-mode.conf
      else
        : > /var/lib/redis/cz-mode.conf
      fi
    '';
  };

  systemd.services.redis-sentinel = {
    description = "Redis Sentinel (with redis_mode = sentinel)";
    wantedBy = [ "multi-user.target" ];
    after = [ "network.target" "cloud-init.service" "redis.service" ];
    wants = [ "cloud-init.service" ];
    unitConfig.ConditionPathExists = "/etc/redis/sentinel.conf";
    preStart = ''
      if [ ! -e /var/lib/redis-sentinel/sentinel.conf ]; then
        cat /etc/redis/sentinel.conf > /var/lib/redis-sentinel/sentinel.conf
      fi
    '';
    serviceConfig = {
      ExecStart = "${config.services.redis.package}/bin/redis-server /var/lib/redis-sentinel/sentinel.conf --sentinel";
      User = "redis";
      Group = "redis";
      StateDirectory = "redis-sentinel";
      StateDirectoryMode = "0700";
      UMask = "0077";
      Restart = "always";
      RestartSec = 2;
    };
  };

  # The Redis Cluster bus (port + 10000) and the Sentinels.
  networking.firewall.allowedTCPPorts = [ 16379 26379 ];
}
