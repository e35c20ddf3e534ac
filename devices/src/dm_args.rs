//! The device model's command line as libxl writes it for a stub domain.
//!
//! libxl builds a QEMU argv for the stub domain and stores it one argument per key under
//! `/vm/<guest-uuid>/image/dm-argv/NNN` (libxl_dm.c, libxl__write_stub_dmargs). The
//! stub domain reads it back to learn what to emulate: which IDE drives, whether it is
//! restoring (`-incoming`), the guest's serial ports. Options this device model does not
//! act on are kept in [`DmArgs::ignored`] so that the log says what was left out.
//!
//! Option values are QEMU option strings (`key=value,key=value`, `,,` for a literal
//! comma; `-device` takes its driver as the first, key-less element).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::block::devid;
use crate::block::{DriveConfig, DriveKind, MediumSource};

/// QEMU options that take no value (every other option takes exactly one).
const FLAGS: &[&str] = &[
    "-no-shutdown",
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-xen-attach",
    "-S",
    "-usb",
    "-no-acpi",
    "-no-hpet",
    "-full-screen",
    "-localtime",
    "-daemonize",
    "-enable-kvm",
];

/// The emulated NIC models this device model has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicModel {
    /// Realtek 8139 (libxl's default `model`)
    Rtl8139,
    /// Intel 82540EM (`model=e1000`)
    E1000,
}

/// A guest NIC: `-device <model>,id=nic<devid>,netdev=net<devid>,mac=<mac>`. In a
/// stub domain its frames go to and from the stub domain's own vif `devid`, which
/// libxl gave the same MAC (the `-netdev type=tap,...` options are dom0 QEMU's and mean
/// nothing here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicConfig {
    pub model: NicModel,
    /// the vif's devid (N of `nicN`)
    pub devid: u32,
    pub mac: [u8; 6],
}

/// What the device model learnt from libxl's argv.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmArgs {
    /// `-xen-domid`: the guest
    pub guest_domid: Option<u32>,
    /// `-name`
    pub guest_name: Option<String>,
    /// `-smp N[,maxcpus=M]`: vCPUs online at start (1 when absent)
    pub vcpus: u32,
    /// the IDE drives, in command-line order
    pub drives: Vec<DriveConfig>,
    /// `-incoming`: restoring; libxl passes `$STUBDOM_RESTORE_INCOMING_ARG`, meaning
    /// "the saved state arrives on console 2"
    pub incoming: Option<String>,
    /// `-serial` values (`/dev/hvc3` ... are the stub domain's consoles 3 ...)
    pub serials: Vec<String>,
    /// `-boot order=`: the BIOS boot order (libxl's default "cda")
    pub boot_order: String,
    /// `-m`: the guest's RAM in MiB, as libxl computes it (maxmem minus video RAM)
    pub ram_mib: Option<u32>,
    /// the NICs, in command-line order
    pub nics: Vec<NicConfig>,
    /// the Xen platform device: `-machine xenfv` (libxl's machine unless
    /// `xen_platform_pci = 0`, which gives `-machine pc,accel=xen`) or `-device xen-platform`
    pub xen_platform: bool,
    /// options (with their values) this device model does not act on
    pub ignored: Vec<String>,
}

impl Default for DmArgs {
    fn default() -> DmArgs {
        DmArgs {
            guest_domid: None,
            guest_name: None,
            vcpus: 1,
            drives: Vec::new(),
            incoming: None,
            serials: Vec::new(),
            boot_order: String::from("cda"),
            ram_mib: None,
            nics: Vec::new(),
            xen_platform: false,
            ignored: Vec::new(),
        }
    }
}

/// The most NICs a guest gets: each takes a PCI slot from
/// [`FIRST_NIC_SLOT`](crate::machine::FIRST_NIC_SLOT) on, and its buffers take stub
/// domain memory.
pub const MAX_NICS: usize = 8;

/// A command line this device model cannot carry out as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgsError {
    /// an option that needs a value ended the argv
    MissingValue(String),
    /// a value is not a well-formed option string or number
    BadValue { option: String, value: String, why: String },
    /// `-device ide-cd,drive=X` names a drive no `-drive id=X` created
    UnknownDrive(String),
    /// a drive `-drive if=none` that no `-device` uses
    UnusedDrive(String),
    /// `-device <nic>,netdev=X` names a netdev no `-netdev id=X` created
    UnknownNetdev(String),
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgsError::MissingValue(option) => write!(f, "{option} needs a value"),
            ArgsError::BadValue { option, value, why } => write!(f, "{option} {value:?}: {why}"),
            ArgsError::UnknownDrive(id) => write!(f, "-device names drive {id:?}, which no -drive defines"),
            ArgsError::UnusedDrive(id) => write!(f, "-drive id={id} is used by no -device"),
            ArgsError::UnknownNetdev(id) => write!(f, "-device names netdev {id:?}, which no -netdev defines"),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff` as a unicast MAC address.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for octet in &mut mac {
        let part = parts.next().filter(|p| !p.is_empty() && p.len() <= 2)?;
        *octet = u8::from_str_radix(part, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0).then_some(mac)
}

/// One QEMU option string, split into `(key, value)` pairs; a key-less element has
/// key "".
pub fn option_pairs(text: &str) -> Vec<(String, String)> {
    let mut elements = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                elements.push(core::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    elements.push(current);
    elements
        .into_iter()
        .filter(|element| !element.is_empty())
        .map(|element| match element.split_once('=') {
            Some((key, value)) => (key.to_string(), value.to_string()),
            None => (String::new(), element),
        })
        .collect()
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn on(value: Option<&str>) -> bool {
    matches!(value, Some("on" | "yes" | "true"))
}

fn bad(option: &str, value: &str, why: impl ToString) -> ArgsError {
    ArgsError::BadValue { option: option.to_string(), value: value.to_string(), why: why.to_string() }
}

/// A `-drive if=none,id=...` waiting for the `-device` that places it.
struct PendingDrive {
    id: String,
    read_only: bool,
    medium: Option<MediumSource>,
}

impl DmArgs {
    /// Reads libxl's argv (without argv[0]).
    pub fn parse<S: AsRef<str>>(argv: &[S]) -> Result<DmArgs, ArgsError> {
        let mut args = DmArgs::default();
        let mut pending: Vec<PendingDrive> = Vec::new();
        // (netdev id each NIC names, and every -netdev id)
        let mut nic_netdevs: Vec<String> = Vec::new();
        let mut netdevs: Vec<String> = Vec::new();
        let mut words = argv.iter().map(AsRef::as_ref);
        while let Some(option) = words.next() {
            if FLAGS.contains(&option) {
                if !matches!(option, "-no-shutdown" | "-nodefaults" | "-no-user-config" | "-nographic") {
                    args.ignored.push(option.to_string());
                }
                continue;
            }
            if !option.starts_with('-') {
                return Err(bad("argument", option, "not an option"));
            }
            let value = words.next().ok_or_else(|| ArgsError::MissingValue(option.to_string()))?;
            match option {
                "-xen-domid" => {
                    args.guest_domid = Some(value.parse().map_err(|_| bad(option, value, "not a domain id"))?);
                }
                "-name" => args.guest_name = Some(value.to_string()),
                "-smp" => {
                    let pairs = option_pairs(value);
                    let online = get(&pairs, "").or_else(|| get(&pairs, "cpus")).unwrap_or("1");
                    args.vcpus =
                        online.parse().ok().filter(|n| *n >= 1).ok_or_else(|| bad(option, value, "no vCPU count"))?;
                }
                "-incoming" => args.incoming = Some(value.to_string()),
                "-boot" => {
                    let pairs = option_pairs(value);
                    let order = get(&pairs, "order").or_else(|| get(&pairs, "")).unwrap_or("cda");
                    if order.is_empty() || !order.chars().all(|c| c.is_ascii_lowercase()) {
                        return Err(bad(option, value, "boot order is not drive letters"));
                    }
                    args.boot_order = order.to_string();
                }
                "-m" => {
                    let size = option_pairs(value);
                    let text = get(&size, "").or_else(|| get(&size, "size")).unwrap_or("");
                    let mib = text.trim_end_matches(['M', 'm']);
                    args.ram_mib = Some(mib.parse().map_err(|_| bad(option, value, "not a size in MiB"))?);
                }
                "-serial" => args.serials.push(value.to_string()),
                "-drive" => args.drive(value, &mut pending)?,
                "-device" if value.starts_with("ide-cd") || value.starts_with("ide-hd") => {
                    args.ide_device(value, &mut pending)?;
                }
                "-device" if value.starts_with("rtl8139") || value.starts_with("e1000") => {
                    if let Some(netdev) = args.nic_device(value)? {
                        nic_netdevs.push(netdev);
                    }
                }
                "-machine" => {
                    let pairs = option_pairs(value);
                    let machine = get(&pairs, "").or_else(|| get(&pairs, "type")).unwrap_or("");
                    args.xen_platform |= machine == "xenfv" || machine.starts_with("xenfv-");
                    args.ignored.push([option, value].join(" "));
                }
                "-device" if value == "xen-platform" || value.starts_with("xen-platform,") => {
                    args.xen_platform = true;
                }
                "-netdev" => {
                    let pairs = option_pairs(value);
                    let id = get(&pairs, "id").ok_or_else(|| bad(option, value, "no id="))?;
                    netdevs.push(id.to_string());
                }
                _ => args.ignored.push([option, value].join(" ")),
            }
        }
        if let Some(drive) = pending.first() {
            return Err(ArgsError::UnusedDrive(drive.id.clone()));
        }
        if let Some(netdev) = nic_netdevs.iter().find(|n| !netdevs.contains(n)) {
            return Err(ArgsError::UnknownNetdev(netdev.clone()));
        }
        Ok(args)
    }

    /// `-device rtl8139|e1000,id=nicN,netdev=netN,mac=...`; returns the netdev it names.
    /// Models other than these two (e1000e, say) are reported as not emulated.
    fn nic_device(&mut self, value: &str) -> Result<Option<String>, ArgsError> {
        let pairs = option_pairs(value);
        let model = match get(&pairs, "") {
            Some("rtl8139") => NicModel::Rtl8139,
            Some("e1000" | "e1000-82540em") => NicModel::E1000,
            _ => {
                self.ignored.push(alloc::format!("-device {value} (this NIC model is not emulated)"));
                return Ok(None);
            }
        };
        let id = get(&pairs, "id").ok_or_else(|| bad("-device", value, "a NIC without id="))?;
        let devid = id
            .strip_prefix("nic")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("-device", value, "a NIC id is nic<devid>"))?;
        let mac_text = get(&pairs, "mac").ok_or_else(|| bad("-device", value, "a NIC without mac="))?;
        let mac = parse_mac(mac_text).ok_or_else(|| bad("-device", value, "mac is not a unicast address"))?;
        if self.nics.len() >= MAX_NICS {
            return Err(bad("-device", value, "more NICs than this device model has PCI slots for (8)"));
        }
        self.nics.push(NicConfig { model, devid, mac });
        Ok(get(&pairs, "netdev").map(str::to_string))
    }

    fn drive(&mut self, value: &str, pending: &mut Vec<PendingDrive>) -> Result<(), ArgsError> {
        let pairs = option_pairs(value);
        if pairs.iter().any(|(key, _)| key.is_empty()) {
            return Err(bad("-drive", value, "an element without '='"));
        }
        let medium = get(&pairs, "file")
            .filter(|file| !file.is_empty())
            .map(|file| MediumSource { filename: file.to_string(), format: get(&pairs, "format").map(str::to_string) });
        let read_only = on(get(&pairs, "readonly"));
        match get(&pairs, "if").unwrap_or("ide") {
            "none" => {
                let id = get(&pairs, "id").ok_or_else(|| bad("-drive", value, "if=none without id"))?;
                pending.push(PendingDrive { id: id.to_string(), read_only, medium });
                Ok(())
            }
            "ide" => {
                let index: u32 = get(&pairs, "index")
                    .ok_or_else(|| bad("-drive", value, "if=ide without index"))?
                    .parse()
                    .map_err(|_| bad("-drive", value, "index is not a number"))?;
                if index > 3 {
                    return Err(bad("-drive", value, "IDE has four positions (index 0-3)"));
                }
                let kind = match get(&pairs, "media").unwrap_or("disk") {
                    "disk" => DriveKind::HardDisk,
                    "cdrom" => DriveKind::CdRom,
                    other => return Err(bad("-drive", value, alloc::format!("media={other}"))),
                };
                let read_only = read_only || kind == DriveKind::CdRom;
                self.drives.push(DriveConfig { devid: devid::hd_devid(index), kind, read_only, medium });
                Ok(())
            }
            other => {
                // AHCI or SCSI disks (hdtype=ahci): not emulated here.
                self.ignored.push(alloc::format!("-drive {value} (if={other} is not emulated)"));
                Ok(())
            }
        }
    }

    fn ide_device(&mut self, value: &str, pending: &mut Vec<PendingDrive>) -> Result<(), ArgsError> {
        let pairs = option_pairs(value);
        let kind = match get(&pairs, "") {
            Some("ide-cd") => DriveKind::CdRom,
            _ => DriveKind::HardDisk,
        };
        let drive_id = get(&pairs, "drive").ok_or_else(|| bad("-device", value, "no drive="))?;
        let at = pending
            .iter()
            .position(|drive| drive.id == drive_id)
            .ok_or_else(|| ArgsError::UnknownDrive(drive_id.to_string()))?;
        let drive = pending.remove(at);
        if get(&pairs, "bus").is_some_and(|bus| bus.starts_with("ahci")) {
            // hdtype=ahci: libxl's AHCI disks are not emulated here.
            self.ignored.push(alloc::format!("-device {value} (AHCI is not emulated)"));
            return Ok(());
        }
        // libxl names the drive after the guest disk's devid: ide-<devid>.
        let devid = drive
            .id
            .strip_prefix("ide-")
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| bad("-drive", &drive.id, "drive id is not ide-<devid>"))?;
        // The IDE position libxl asked for must be the one the devid implies.
        let bus = get(&pairs, "bus").and_then(|b| b.strip_prefix("ide.")).and_then(|b| b.parse::<u32>().ok());
        let unit = get(&pairs, "unit").and_then(|u| u.parse::<u32>().ok());
        if let (Some(bus), Some(unit)) = (bus, unit)
            && devid::disk_index(devid) != Some(bus * 2 + unit)
        {
            return Err(bad("-device", value, alloc::format!("ide.{bus} unit {unit} is not where devid {devid} sits")));
        }
        self.drives.push(DriveConfig {
            devid,
            kind,
            read_only: drive.read_only || kind == DriveKind::CdRom,
            medium: drive.medium,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// The argv libxl 4.17 wrote for an HVM guest with a disk, a CD-ROM and a NIC
    /// (libxl-4.17-stubdom-observed.md).
    const OBSERVED_4_17: &[&str] = &[
        "-xen-domid",
        "1",
        "-no-shutdown",
        "-nodefaults",
        "-no-user-config",
        "-name",
        "stubtest",
        "-display",
        "none",
        "-serial",
        "/dev/hvc3",
        "-nographic",
        "-device",
        "cirrus-vga,vgamem_mb=8",
        "-boot",
        "order=dc",
        "-device",
        "e1000,id=nic0,netdev=net0,mac=00:16:3e:69:2a:f6",
        "-netdev",
        "type=tap,id=net0,ifname=vif1.0-emu,br=xenbr0,script=no,downscript=no",
        "-machine",
        "xenfv,suppress-vmdesc=on",
        "-m",
        "56",
        "-drive",
        "file=/dev/xvda,if=ide,index=0,media=disk,format=host_device,cache=writeback",
        "-drive",
        "if=none,readonly=on,id=ide-5632,file=/dev/xvdc,format=host_device",
        "-device",
        "ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0",
    ];

    #[test]
    fn libxl_4_17_argv() {
        let args = DmArgs::parse(OBSERVED_4_17).unwrap();
        assert_eq!(args.guest_domid, Some(1));
        assert_eq!(args.guest_name.as_deref(), Some("stubtest"));
        assert_eq!(args.vcpus, 1);
        assert_eq!(args.serials, vec!["/dev/hvc3".to_string()]);
        assert_eq!(args.incoming, None);
        assert_eq!(args.boot_order, "dc");
        assert_eq!(args.ram_mib, Some(56));
        assert!(args.xen_platform, "-machine xenfv has the Xen platform device");
        assert_eq!(
            args.drives,
            vec![
                DriveConfig {
                    devid: 768,
                    kind: DriveKind::HardDisk,
                    read_only: false,
                    medium: Some(MediumSource { filename: "/dev/xvda".into(), format: Some("host_device".into()) }),
                },
                DriveConfig {
                    devid: 5632,
                    kind: DriveKind::CdRom,
                    read_only: true,
                    medium: Some(MediumSource { filename: "/dev/xvdc".into(), format: Some("host_device".into()) }),
                },
            ]
        );
        // The VGA and machine options are reported as not acted on; the NIC is ours.
        assert!(args.ignored.iter().any(|o| o.starts_with("-device cirrus-vga")));
        assert_eq!(
            args.nics,
            vec![NicConfig { model: NicModel::E1000, devid: 0, mac: [0x00, 0x16, 0x3e, 0x69, 0x2a, 0xf6] }]
        );
    }

    #[test]
    fn nics_pair_with_their_netdevs_and_other_models_are_not_emulated() {
        let args = DmArgs::parse(&[
            "-device",
            "rtl8139,id=nic1,netdev=net1,mac=00:16:3e:00:00:01",
            "-netdev",
            "type=tap,id=net1,ifname=vif3.1-emu,br=xenbr0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,id=nic2,netdev=net2,mac=00:16:3e:00:00:02",
            "-netdev",
            "type=tap,id=net2",
        ])
        .unwrap();
        assert_eq!(args.nics, vec![NicConfig { model: NicModel::Rtl8139, devid: 1, mac: [0, 0x16, 0x3e, 0, 0, 1] }]);
        assert!(args.ignored.iter().any(|o| o.contains("virtio-net-pci")), "{:?}", args.ignored);
        assert_eq!(
            DmArgs::parse(&["-device", "e1000,id=nic0,netdev=net9,mac=00:16:3e:00:00:01"]),
            Err(ArgsError::UnknownNetdev("net9".into()))
        );
        assert!(matches!(
            DmArgs::parse(&["-device", "e1000,id=nic0,netdev=net0,mac=01:00:5e:00:00:01", "-netdev", "id=net0"]),
            Err(ArgsError::BadValue { .. })
        ));
        assert!(matches!(
            DmArgs::parse(&["-device", "e1000,id=eth0,netdev=net0,mac=00:16:3e:00:00:01", "-netdev", "id=net0"]),
            Err(ArgsError::BadValue { .. })
        ));
        let many: Vec<String> = (0..=MAX_NICS)
            .flat_map(|n| {
                [
                    String::from("-device"),
                    alloc::format!("e1000,id=nic{n},netdev=net{n},mac=00:16:3e:00:00:{n:02x}"),
                    String::from("-netdev"),
                    alloc::format!("id=net{n}"),
                ]
            })
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(DmArgs::parse(&many), Err(ArgsError::BadValue { .. })), "more than {MAX_NICS} NICs");
        assert_eq!(DmArgs::parse(&many[..4 * MAX_NICS]).map(|args| args.nics.len()), Ok(MAX_NICS));
        assert_eq!(parse_mac("00:16:3e:0a:b:c"), Some([0, 0x16, 0x3e, 0x0a, 0x0b, 0x0c]));
        assert_eq!(parse_mac("00:16:3e:0a:0b"), None);
    }

    #[test]
    fn boot_order_and_memory_defaults_and_refusals() {
        let args = DmArgs::parse(&["-xen-domid", "3"]).unwrap();
        assert_eq!((args.boot_order.as_str(), args.ram_mib), ("cda", None));
        assert!(matches!(DmArgs::parse(&["-boot", "order=D1"]), Err(ArgsError::BadValue { .. })));
        assert!(matches!(DmArgs::parse(&["-m", "lots"]), Err(ArgsError::BadValue { .. })));
        assert_eq!(DmArgs::parse(&["-m", "size=120M"]).unwrap().ram_mib, Some(120));
    }

    #[test]
    fn empty_cdrom_and_restore() {
        let args = DmArgs::parse(&[
            "-xen-domid",
            "7",
            "-drive",
            "if=none,readonly=on,id=ide-5696",
            "-device",
            "ide-cd,id=ide-5696,drive=ide-5696,bus=ide.1,unit=1",
            "-incoming",
            "$STUBDOM_RESTORE_INCOMING_ARG",
        ])
        .unwrap();
        assert_eq!(
            args.drives,
            vec![DriveConfig { devid: 5696, kind: DriveKind::CdRom, read_only: true, medium: None }]
        );
        assert_eq!(args.incoming.as_deref(), Some("$STUBDOM_RESTORE_INCOMING_ARG"));
    }

    #[test]
    fn smp_gives_the_online_vcpus() {
        // libxl: `-smp <max>` or, with an avail_vcpus map, `-smp <online>,maxcpus=<max>`.
        assert_eq!(DmArgs::parse(&["-smp", "4"]).unwrap().vcpus, 4);
        assert_eq!(DmArgs::parse(&["-smp", "2,maxcpus=8"]).unwrap().vcpus, 2);
        assert!(matches!(DmArgs::parse(&["-smp", "0"]), Err(ArgsError::BadValue { .. })));
    }

    #[test]
    fn option_strings_escape_commas() {
        assert_eq!(
            option_pairs("ide-cd,id=a,,b,drive=x"),
            vec![("".into(), "ide-cd".into()), ("id".into(), "a,b".into()), ("drive".into(), "x".into())]
        );
        let args = DmArgs::parse(&["-drive", "file=/dev/xvdb,,odd,if=ide,index=1,media=disk"]).unwrap();
        assert_eq!(args.drives[0].medium.as_ref().unwrap().filename, "/dev/xvdb,odd");
        assert_eq!(args.drives[0].devid, 832);
    }

    #[test]
    fn bad_command_lines_are_errors() {
        assert_eq!(DmArgs::parse(&["-drive"]), Err(ArgsError::MissingValue("-drive".into())));
        assert!(matches!(DmArgs::parse(&["-xen-domid", "x"]), Err(ArgsError::BadValue { .. })));
        assert!(matches!(DmArgs::parse(&["stray"]), Err(ArgsError::BadValue { .. })));
        assert_eq!(DmArgs::parse(&["-device", "ide-cd,drive=nope"]), Err(ArgsError::UnknownDrive("nope".into())));
        assert_eq!(DmArgs::parse(&["-drive", "if=none,id=ide-5632"]), Err(ArgsError::UnusedDrive("ide-5632".into())));
        assert!(matches!(
            DmArgs::parse(&["-drive", "if=none,id=ide-5632", "-device", "ide-cd,drive=ide-5632,bus=ide.0,unit=0"]),
            Err(ArgsError::BadValue { .. })
        ));
        assert!(matches!(DmArgs::parse(&["-drive", "file=/dev/xvde,if=ide,index=4"]), Err(ArgsError::BadValue { .. })));
        assert!(matches!(
            DmArgs::parse(&["-drive", "if=none,id=x", "-device", "ide-cd,drive=x"]),
            Err(ArgsError::BadValue { .. })
        ));
    }

    #[test]
    fn ahci_disks_are_reported_not_emulated() {
        let args = DmArgs::parse(&[
            "-device",
            "ahci,id=ahci0,multifunction=on,bus=pci.0,addr=0xd",
            "-drive",
            "file=/dev/xvda,if=none,id=ahcidisk-0,format=host_device,cache=writeback",
            "-device",
            "ide-hd,bus=ahci0.0,unit=0,drive=ahcidisk-0",
        ]);
        let args = args.unwrap();
        assert!(args.drives.is_empty());
        assert!(args.ignored.iter().any(|o| o.contains("AHCI is not emulated")), "{args:?}");
    }

    #[test]
    fn the_xen_platform_device_comes_with_xenfv_or_its_own_device() {
        let platform = |argv: &[&str]| DmArgs::parse(argv).unwrap().xen_platform;
        assert!(platform(&["-machine", "xenfv,suppress-vmdesc=on"]));
        assert!(platform(&["-machine", "type=xenfv"]));
        assert!(!platform(&["-machine", "pc,accel=xen,suppress-vmdesc=on"]), "xen_platform_pci = 0");
        assert!(platform(&["-machine", "pc,accel=xen", "-device", "xen-platform"]));
        assert!(!platform(&[]));
    }
}
