//! The guest's NIC through the whole service in the simulated Xen: an RTL8139 the
//! guest programs as 8139too does, bridged by the network task to the stub domain's
//! netfront and a simulated netback. Frames cross both ways; when netback goes away the
//! card shows link down and the device model keeps serving the guest; a frame that meets
//! a full receive ring is kept and offered again, not lost.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use devices::dm_args::{NicConfig, NicModel};
mod common;

use common::{GUEST, STUB, guest_config, spawn_service, until_ready};
use devices::service::Config;
use frontends::netfront::sim::{ToGuest, Wire, netback, quiet_peer};
use xen_seams::sim::{Executor, PvDevice, SimGuest, SimXen, World};

const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x5a, 0x00, 0x01];
const VIF: PvDevice = PvDevice { kind: "vif", devid: 0, frontend: STUB, backend: 0 };

/// Where the guest puts the card's I/O window (BAR0), and its buffers in guest RAM.
const IO_BASE: u16 = 0xc000;
const RX_RING_GPA: u64 = 0x10000;
const TX_BUFFER_GPA: u64 = 0x30000;

// RTL8139 registers and bits (offsets in the I/O window), as 8139too names them.
const TSD0: u16 = 0x10;
const TSAD0: u16 = 0x20;
const RBSTART: u16 = 0x30;
const CR: u16 = 0x37;
const CAPR: u16 = 0x38;
const IMR: u16 = 0x3c;
const ISR: u16 = 0x3e;
const RCR: u16 = 0x44;
const MSR: u16 = 0x58;
const CR_RE_TE: u8 = 0x0c;
const ISR_ROK: u16 = 0x01;
const ISR_TOK: u16 = 0x04;
const ISR_RXOVW: u16 = 0x10;
/// ChipCmd's Rx Buffer Empty bit.
const CR_BUFE: u8 = 0x01;
/// The ring 8139too's RCR (RBLEN 0) asks for.
const RX_RING_BYTES: u32 = 8192;
const RCR_APM_AB_WRAP: u32 = 0x02 | 0x08 | 0x80;
const MSR_LINK_DOWN: u8 = 0x04;
const TSD_TOK: u32 = 0x8000;

fn config() -> Config {
    let mut config = guest_config();
    config.vcpus = 1;
    if let Some(guest) = config.guest.as_mut() {
        guest.nics = vec![NicConfig { model: NicModel::Rtl8139, devid: 0, mac: MAC }];
    }
    config
}

/// Polls `check` every millisecond of simulated time until it holds; panics with
/// `what` after 10 s.
async fn until(clock: &SimXen, what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..10_000 {
        if check().await {
            return;
        }
        xen_seams::Clock::sleep(clock, Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

fn frame(destination: [u8; 6], source: [u8; 6], fill: u8) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    frame.extend((0..100u8).map(|i| i ^ fill));
    frame
}

/// The service in the simulated Xen with the card's vif and a simulated netback; once
/// the device model is ready, `guest` (given the guest, dom0's clock and netback's
/// wire) runs to its end.
fn with_card<F: Future<Output = ()> + 'static>(guest: impl FnOnce(SimGuest, SimXen, Rc<RefCell<Wire>>) -> F) {
    let world = World::new();
    let stub: &'static SimXen = Box::leak(Box::new(world.domain(STUB)));
    world.toolstack(VIF, &[("mac", "00:16:3e:5a:00:01")]);
    let wire = Rc::new(RefCell::new(Wire::default()));
    let sim_guest: SimGuest = world.hvm_guest(GUEST, 1, 16 << 20);
    let mut executor = Executor::new(&world);
    executor.spawn_background("netback", netback(world.domain(0), VIF, wire.clone(), quiet_peer));
    spawn_service(&mut executor, stub, config());
    let watcher = world.clone();
    let body = guest(sim_guest, world.domain(0), wire);
    let done = executor.spawn("guest", async move {
        until_ready(&watcher).await;
        body.await;
    });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    assert!(done.is_ready());
}

/// The card at 00:03.0, as hvmloader finds it (the I/O window placed and enabled), then
/// 8139too's open: an 8 KiB receive ring, filters, interrupts `imr`, RX and TX on; returns
/// once netfront is connected.
async fn open_card(g: &SimGuest, clock: &SimXen, w: &Rc<RefCell<Wire>>, imr: u16) {
    assert_eq!(g.pci_read(3, 0, 0, 4).await, 0x8139_10ec);
    g.pci_write(3, 0, 0x10, 4, u32::from(IO_BASE) | 1).await;
    g.pci_write(3, 0, 0x04, 2, 0x0005).await; // I/O space, bus master
    for (i, byte) in MAC.iter().enumerate() {
        assert_eq!(g.inb(IO_BASE + i as u16).await, *byte, "IDR{i} from the argv's MAC");
    }
    g.outl(IO_BASE + RBSTART, RX_RING_GPA as u32).await;
    g.outl(IO_BASE + RCR, RCR_APM_AB_WRAP).await;
    g.outw(IO_BASE + IMR, imr).await;
    g.outb(IO_BASE + CR, CR_RE_TE).await;
    until(clock, "link up once netfront is connected", async || {
        g.inb(IO_BASE + MSR).await & MSR_LINK_DOWN == 0 && w.borrow().rx_slots_used == 0
    })
    .await;
}

#[test]
fn frames_cross_both_ways_and_a_closed_vif_is_link_down() {
    with_card(|g, clock, w| async move {
        let to_us = frame(MAC, [0x02, 0, 0, 0, 0, 9], 0x5a);
        let expected_rx = to_us.clone();
        open_card(&g, &clock, &w, ISR_ROK | ISR_TOK).await;

        // Transmit slot 0: the frame reaches netback's wire whole, and the slot reports TOK.
        let from_us = frame([0xff; 6], MAC, 0xa5);
        g.write_ram(TX_BUFFER_GPA, &from_us);
        g.outl(IO_BASE + TSAD0, TX_BUFFER_GPA as u32).await;
        g.outl(IO_BASE + TSD0, from_us.len() as u32).await;
        until(&clock, "the guest's frame on the wire", async || w.borrow().from_guest.contains(&from_us)).await;
        assert_ne!(g.inl(IO_BASE + TSD0).await & TSD_TOK, 0, "slot 0 reports TOK");
        assert_ne!(g.inw(IO_BASE + ISR).await & ISR_TOK, 0);
        g.outw(IO_BASE + ISR, ISR_TOK).await;

        // A frame for our MAC from the wire lands in the ring with its header.
        w.borrow_mut().to_guest.push_back(ToGuest::Frame(to_us.clone()));
        until(&clock, "ROK for the wire's frame", async || g.inw(IO_BASE + ISR).await & ISR_ROK != 0).await;
        let mut header = [0u8; 4];
        g.read_ram(RX_RING_GPA, &mut header);
        let status = u16::from_le_bytes([header[0], header[1]]);
        let len_bytes = u16::from_le_bytes([header[2], header[3]]) as usize;
        assert_eq!(status & 1, 1, "ROK in the packet header: {status:#x}");
        assert_eq!(len_bytes, to_us.len() + 4, "the length counts the FCS");
        let mut received = vec![0u8; to_us.len()];
        g.read_ram(RX_RING_GPA + 4, &mut received);
        assert_eq!(received, expected_rx);

        // netback goes away: the guest sees the link drop, and is still served.
        {
            let mut wire = w.borrow_mut();
            wire.close_after = Some(wire.rx_slots_used);
        }
        until(&clock, "link down after netback closed", async || g.inb(IO_BASE + MSR).await & MSR_LINK_DOWN != 0).await;
        assert_eq!(g.pci_read(0, 0, 0, 4).await, 0x1237_8086, "the machine is still served");
        assert_eq!(g.inb(IO_BASE).await, MAC[0], "so is the card");
    });
}

/// A wire that sends more than the guest's 8 KiB ring holds before the guest reads: the
/// card signals the overflow (RXOVW, unmasked as 8139too does), and once the guest reads
/// its ring as 8139too does (CAPR after each packet) every frame arrives, in order: the
/// one that met the full ring is offered again, not lost (the bed saw each such loss
/// cost dom0's TCP a retransmission).
#[test]
fn a_frame_that_meets_a_full_ring_is_not_lost() {
    const FRAMES: u8 = 12;
    const FRAME_BYTES: usize = 1000;
    with_card(|g, clock, w| async move {
        open_card(&g, &clock, &w, ISR_ROK | ISR_TOK | ISR_RXOVW).await;
        // Frame n carries n in every payload byte; eight of them fill 8 KiB.
        for n in 0..FRAMES {
            let mut frame = frame(MAC, [0x02, 0, 0, 0, 0, 9], 0);
            frame.resize(FRAME_BYTES, n);
            frame[14..].fill(n);
            w.borrow_mut().to_guest.push_back(ToGuest::Frame(frame));
        }
        until(&clock, "RXOVW once the ring is full", async || g.inw(IO_BASE + ISR).await & ISR_RXOVW != 0).await;

        // 8139too's rtl8139_rx: while the ring is not empty, the packet at cur_rx, then
        // CAPR = cur_rx - 16; its interrupt ack; until every frame is in.
        let mut seen = Vec::new();
        let mut cur_rx: u32 = 0;
        until(&clock, "every frame read from the ring", async || {
            g.outw(IO_BASE + ISR, ISR_ROK | ISR_RXOVW).await;
            while g.inb(IO_BASE + CR).await & CR_BUFE == 0 {
                let mut header = [0u8; 4];
                g.read_ram(RX_RING_GPA + u64::from(cur_rx % RX_RING_BYTES), &mut header);
                let len_bytes = u32::from(u16::from_le_bytes([header[2], header[3]]));
                assert_eq!(len_bytes as usize, FRAME_BYTES + 4, "packet {} (the length counts the FCS)", seen.len());
                let mut payload = [0u8; 1];
                g.read_ram(RX_RING_GPA + u64::from(cur_rx % RX_RING_BYTES) + 4 + 14, &mut payload);
                seen.push(payload[0]);
                cur_rx = (cur_rx + len_bytes + 4 + 3) & !3;
                g.outw(IO_BASE + CAPR, (cur_rx.wrapping_sub(16) & 0xffff) as u16).await;
            }
            seen.len() >= usize::from(FRAMES)
        })
        .await;
        assert_eq!(seen, (0..FRAMES).collect::<Vec<u8>>(), "the frames the guest read, in order");
    });
}
