# What every role's image has: a qcow2 disk (grown to the disk it is given at first boot),
# cloud-init for the per-machine part, SSH with keys only, and system.build.qcow2.
{ config, lib, pkgs, modulesPath, role, ... }:

{
  imports = [ "${modulesPath}/profiles/qemu-guest.nix" ];

  nixpkgs.hostPlatform = "x86_64-linux";
  # Consul is BSL-licensed (unfree in nixpkgs): allowed by name, nothing else.
  nixpkgs.config.allowUnfreePredicate = pkg: lib.getName pkg == "consul";

  system.build.qcow2 = import "${modulesPath}/../lib/make-disk-image.nix" {
    inherit config lib pkgs;
    name = "chat-zinx-${role}-image";
    format = "qcow2";
    partitionTableType = "legacy";
    diskSize = "auto";
    additionalSpace = "1024M";
    copyChannel = false;
  };

  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
    autoResize = true;
  };
  boot.growPartition = true;
  boot.loader.grub.device = "/dev/vda";
  boot.kernelParams = [ "console=ttyS0" ];

  # Host name, SSH keys and the files of the role (secrets, per-machine settings) come from
  # cloud-init user data; the network from DHCP.
  networking.hostName = lib.mkDefault "";
  services.cloud-init.enable = true;
  networking.useDHCP = lib.mkDefault true;

  services.openssh = {
    enable = true;
    settings = {
      PasswordAuthentication = false;
      KbdInteractiveAuthentication = false;
    };
  };

  system.stateVersion = "25.11";
}
