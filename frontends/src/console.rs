//! PV consoles `device/console/N`: byte streams to dom0, both ways.
//!
//! libxl gives a stub domain consoles 1 (save), 2 (restore) and 3.. (the guest's
//! serial ports), all served by a dom0 QEMU. Each is the classic console ring page
//! (io/console.h: `in` from dom0, `out` to dom0, free-running indexes) shared by
//! grant, plus an event channel, set up through the xenbus handshake.

use crate::xenbus::{self, Device, State};
use alloc::format;
use core::time::Duration;
use xen_abi::console::{self as ring, IN_RING_SIZE, OUT_RING_SIZE};
use xen_seams::{GrantRef, Port, SharedPage, Xen};

/// How long a write waits for the backend to make room before giving up.
pub const WRITE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ConsoleError {
    #[error("console handshake: {0}")]
    Xenbus(#[from] xenbus::Error),
    #[error("console: {0}")]
    Xen(#[from] xen_seams::Error),
    /// The backend stopped consuming: nothing moved for `WRITE_WAIT`.
    #[error("console backend stopped reading")]
    Stalled,
    /// The backend's indexes claim more than a ringful.
    #[error("console backend corrupted the ring indexes")]
    CorruptRing,
}

/// A connected secondary console.
pub struct Console<'x, X: Xen> {
    xen: &'x X,
    device: Device<'x, X>,
    page: X::Page,
    grant: GrantRef,
    port: Port,
}

impl<'x, X: Xen> Console<'x, X> {
    /// Connects `device/console/<number>`.
    pub async fn connect(xen: &'x X, number: u32) -> Result<Self, ConsoleError> {
        let device = Device::open(xen, "console", number).await?;
        let page = xen.alloc_page()?;
        let grant = xen.grant(device.backend_id, page.frame(), false)?;
        let port = match xen.alloc_unbound(device.backend_id) {
            Ok(p) => p,
            Err(e) => {
                let _ = xen.end(grant);
                return Err(e.into());
            }
        };
        let console = Console { xen, device, page, grant, port };
        console
            .device
            .publish(&[("ring-ref", format!("{}", grant.0)), ("port", format!("{}", port.0))], State::Initialised)
            .await?;
        console.device.wait_backend(State::Connected).await?;
        console.device.switch_state(State::Connected).await?;
        Ok(console)
    }

    fn indexes(&self, cons_offset: usize, prod_offset: usize, size: usize) -> Result<(u32, u32, usize), ConsoleError> {
        let cons = self.page.read_u32(cons_offset);
        let prod = self.page.read_u32(prod_offset);
        let used = prod.wrapping_sub(cons) as usize;
        if used > size {
            return Err(ConsoleError::CorruptRing);
        }
        Ok((cons, prod, used))
    }

    /// Writes all of `data`, waiting (bounded) for room.
    pub async fn write(&self, mut data: &[u8]) -> Result<(), ConsoleError> {
        let mut last_progress = self.xen.now_ns();
        while !data.is_empty() {
            let (_, prod, used) = self.indexes(ring::OUT_CONS_OFFSET, ring::OUT_PROD_OFFSET, OUT_RING_SIZE)?;
            let n = (OUT_RING_SIZE - used).min(data.len());
            if n == 0 {
                if self.xen.now_ns() - last_progress > WRITE_WAIT.as_nanos() as u64 {
                    return Err(ConsoleError::Stalled);
                }
                // The backend notifies when it consumes; a short sleep bounds a lost wake-up.
                let _ = self.xen.notify(self.port);
                wait_or_sleep(self.xen, self.port, Duration::from_millis(50)).await;
                continue;
            }
            let start = ring::slot(OUT_RING_SIZE, prod);
            let first = n.min(OUT_RING_SIZE - start);
            self.page.write(ring::OUTPUT_OFFSET + start, &data[..first]);
            self.page.write(ring::OUTPUT_OFFSET, &data[first..n]);
            self.page.write_u32(ring::OUT_PROD_OFFSET, prod.wrapping_add(n as u32));
            self.xen.notify(self.port)?;
            data = &data[n..];
            last_progress = self.xen.now_ns();
        }
        Ok(())
    }

    /// Waits until the backend has taken everything written (a state file on the save
    /// console is complete in dom0 only then); fails if it stalls for `WRITE_WAIT`.
    pub async fn drain(&self) -> Result<(), ConsoleError> {
        let mut last = self.indexes(ring::OUT_CONS_OFFSET, ring::OUT_PROD_OFFSET, OUT_RING_SIZE)?;
        let mut last_progress = self.xen.now_ns();
        loop {
            let now = self.indexes(ring::OUT_CONS_OFFSET, ring::OUT_PROD_OFFSET, OUT_RING_SIZE)?;
            if now.2 == 0 {
                return Ok(());
            }
            if now.0 != last.0 {
                last = now;
                last_progress = self.xen.now_ns();
            } else if self.xen.now_ns() - last_progress > WRITE_WAIT.as_nanos() as u64 {
                return Err(ConsoleError::Stalled);
            }
            let _ = self.xen.notify(self.port);
            wait_or_sleep(self.xen, self.port, Duration::from_millis(20)).await;
        }
    }

    /// Reads what dom0 sent, waiting at most `limit` for something to arrive;
    /// returns 0 on timeout.
    pub async fn read(&self, buf: &mut [u8], limit: Duration) -> Result<usize, ConsoleError> {
        let deadline = self.xen.now_ns().saturating_add(limit.as_nanos() as u64);
        loop {
            let (cons, _, used) = self.indexes(ring::IN_CONS_OFFSET, ring::IN_PROD_OFFSET, IN_RING_SIZE)?;
            let n = used.min(buf.len());
            if n > 0 {
                let start = ring::slot(IN_RING_SIZE, cons);
                let first = n.min(IN_RING_SIZE - start);
                self.page.read(start, &mut buf[..first]);
                self.page.read(0, &mut buf[first..n]);
                self.page.write_u32(ring::IN_CONS_OFFSET, cons.wrapping_add(n as u32));
                self.xen.notify(self.port)?;
                return Ok(n);
            }
            let now = self.xen.now_ns();
            if now >= deadline {
                return Ok(0);
            }
            wait_or_sleep(self.xen, self.port, Duration::from_nanos(deadline - now).min(Duration::from_millis(50)))
                .await;
        }
    }

    /// Closes the console and revokes the ring (kept aside if dom0 still maps it).
    pub async fn close(self) -> Result<(), ConsoleError> {
        let result = self.device.close().await;
        let _ = self.xen.close(self.port);
        if self.xen.end(self.grant).is_err() {
            // dom0 still maps the ring: the page must outlive the grant.
            core::mem::forget(self.page);
        }
        Ok(result?)
    }
}

/// Waits for an event on `port` or `limit`, whichever comes first.
async fn wait_or_sleep<X: Xen>(xen: &X, port: Port, limit: Duration) {
    let mut event = core::pin::pin!(xen.wait(port));
    let mut sleep = core::pin::pin!(xen.sleep(limit));
    core::future::poll_fn(|cx| {
        if event.as_mut().poll(cx).is_ready() || sleep.as_mut().poll(cx).is_ready() {
            core::task::Poll::Ready(())
        } else {
            core::task::Poll::Pending
        }
    })
    .await
}

/// dom0's side of a console in the simulated Xen (feature `sim`), for other crates'
/// tests: a backend that serves a [`Line`] until the test ends.
#[cfg(any(test, feature = "sim"))]
pub mod sim {
    use alloc::collections::VecDeque;
    use alloc::format;
    use alloc::rc::Rc;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use core::time::Duration;

    use xen_abi::console::{self as ring, IN_RING_SIZE, OUT_RING_SIZE};
    use xen_seams::sim::{PvDevice, SimXen};
    use xen_seams::{Clock, EventChannels, GrantRef, SharedPage, Tx, Xenstore};

    /// What crosses the console: bytes queued for the guest, bytes it sent.
    #[derive(Debug, Default)]
    pub struct Line {
        pub to_guest: VecDeque<u8>,
        pub from_guest: Vec<u8>,
        /// Stop consuming the guest's output after this many bytes (a backend that
        /// hangs mid-transfer).
        pub consume_limit: Option<usize>,
    }

    async fn number(xen: &SimXen, path: &str) -> Option<u32> {
        xen.read_string(Tx::NONE, path).await.ok()?.trim().parse().ok()
    }

    /// Serves console `device` (attached with `World::toolstack`) as dom0's backend
    /// does: waits for the frontend's Initialised, maps its ring, says Connected, then
    /// moves bytes both ways, forever (spawn it in the background).
    pub async fn backend(back: SimXen, device: PvDevice<'_>, line: Rc<RefCell<Line>>) {
        let (front, back_path) = (device.front_path(), device.back_path());
        while back.read_string(Tx::NONE, &format!("{front}/state")).await.as_deref() != Ok("3") {
            back.sleep(Duration::from_millis(1)).await;
        }
        let (Some(gref), Some(remote)) =
            (number(&back, &format!("{front}/ring-ref")).await, number(&back, &format!("{front}/port")).await)
        else {
            return;
        };
        let Ok(page) = back.map_grant(device.frontend, GrantRef(gref), true) else { return };
        let Ok(port) = back.bind_interdomain(device.frontend, remote) else { return };
        if back.write(Tx::NONE, &format!("{back_path}/state"), b"4").await.is_err() {
            return;
        }
        loop {
            let (cons, prod) = (page.read_u32(ring::OUT_CONS_OFFSET), page.read_u32(ring::OUT_PROD_OFFSET));
            let allowed = {
                let line = line.borrow();
                line.consume_limit.map_or(usize::MAX, |limit| limit.saturating_sub(line.from_guest.len()))
            };
            let taking = (prod.wrapping_sub(cons).min(OUT_RING_SIZE as u32) as usize).min(allowed) as u32;
            let mut moved = taking > 0;
            let mut byte = [0u8];
            for i in 0..taking {
                page.read(ring::OUTPUT_OFFSET + ring::slot(OUT_RING_SIZE, cons.wrapping_add(i)), &mut byte);
                line.borrow_mut().from_guest.push(byte[0]);
            }
            page.write_u32(ring::OUT_CONS_OFFSET, cons.wrapping_add(taking));
            let (icons, iprod) = (page.read_u32(ring::IN_CONS_OFFSET), page.read_u32(ring::IN_PROD_OFFSET));
            let room = IN_RING_SIZE.saturating_sub(iprod.wrapping_sub(icons) as usize);
            let mut sent = 0u32;
            while (sent as usize) < room {
                let Some(byte) = line.borrow_mut().to_guest.pop_front() else { break };
                page.write(ring::slot(IN_RING_SIZE, iprod.wrapping_add(sent)), &[byte]);
                sent += 1;
            }
            if sent > 0 {
                page.write_u32(ring::IN_PROD_OFFSET, iprod.wrapping_add(sent));
                moved = true;
            }
            if moved {
                let _ = back.notify(port);
            }
            // The frontend notifies when it writes or consumes; poll now and then too.
            let mut event = core::pin::pin!(back.wait(port));
            let mut tick = core::pin::pin!(back.sleep(Duration::from_millis(5)));
            core::future::poll_fn(|cx| {
                if event.as_mut().poll(cx).is_ready() || tick.as_mut().poll(cx).is_ready() {
                    core::task::Poll::Ready(())
                } else {
                    core::task::Poll::Pending
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::rc::Rc;
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use xen_seams::sim::{Executor, PvDevice, SimXen, World};
    use xen_seams::{EventChannels, GrantRef, Tx, Xenstore};

    const FRONT: u16 = 5;
    const FRONT_NODE: &str = "/local/domain/5/device/console/3";
    const BACK_NODE: &str = "/local/domain/0/backend/console/5/3";

    /// The device under test, attached as libxl does ([`World::toolstack`]).
    const DEVICE: PvDevice = PvDevice { kind: "console", devid: 3, frontend: FRONT, backend: 0 };

    async fn number(xen: &SimXen, path: &str) -> u32 {
        xen.read_string(Tx::NONE, path).await.unwrap().parse().unwrap()
    }

    /// dom0's console backend: maps the ring, sends `to_guest`, collects what the
    /// guest writes until `expect` bytes arrived, then closes when asked.
    async fn backend(back: SimXen, to_guest: Vec<u8>, expect: usize, got: Rc<RefCell<Vec<u8>>>, consume: bool) {
        while back.read_string(Tx::NONE, &format!("{FRONT_NODE}/state")).await.as_deref() != Ok("3") {
            xen_seams::Clock::sleep(&back, Duration::from_millis(1)).await;
        }
        let gref = number(&back, &format!("{FRONT_NODE}/ring-ref")).await;
        let remote = number(&back, &format!("{FRONT_NODE}/port")).await;
        let ring = back.map_grant(FRONT, GrantRef(gref), true).unwrap();
        let port = back.bind_interdomain(FRONT, remote).unwrap();
        back.write(Tx::NONE, &format!("{BACK_NODE}/state"), b"4").await.unwrap();
        let mut sent = 0;
        while got.borrow().len() < expect || sent < to_guest.len() {
            // Guest -> dom0.
            let cons = ring.read_u32(ring::OUT_CONS_OFFSET);
            let prod = ring.read_u32(ring::OUT_PROD_OFFSET);
            if consume && prod != cons {
                let mut byte = [0u8];
                for i in 0..prod.wrapping_sub(cons) {
                    ring.read(ring::OUTPUT_OFFSET + ring::slot(OUT_RING_SIZE, cons.wrapping_add(i)), &mut byte);
                    got.borrow_mut().push(byte[0]);
                }
                ring.write_u32(ring::OUT_CONS_OFFSET, prod);
                back.notify(port).unwrap();
            }
            // dom0 -> guest, in small pieces.
            let (icons, iprod) = (ring.read_u32(ring::IN_CONS_OFFSET), ring.read_u32(ring::IN_PROD_OFFSET));
            let room = IN_RING_SIZE - iprod.wrapping_sub(icons) as usize;
            let n = room.min(to_guest.len() - sent).min(700);
            for i in 0..n {
                ring.write(ring::slot(IN_RING_SIZE, iprod.wrapping_add(i as u32)), &to_guest[sent + i..sent + i + 1]);
            }
            if n > 0 {
                ring.write_u32(ring::IN_PROD_OFFSET, iprod.wrapping_add(n as u32));
                sent += n;
                back.notify(port).unwrap();
            }
            if !consume && sent == to_guest.len() {
                break;
            }
            wait_or_sleep(&back, port, Duration::from_millis(5)).await;
        }
        // Wait for the guest's Closing, then close and unmap.
        while back.read_string(Tx::NONE, &format!("{FRONT_NODE}/state")).await.as_deref() != Ok("5") {
            xen_seams::Clock::sleep(&back, Duration::from_millis(1)).await;
        }
        drop(ring);
        let _ = back.close(port);
        back.write(Tx::NONE, &format!("{BACK_NODE}/state"), b"6").await.unwrap();
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
    }

    #[test]
    fn bytes_flow_both_ways_across_ring_wraps() {
        let world = World::new();
        world.toolstack(DEVICE, &[]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        let to_guest = pattern(50_000, 7);
        let to_dom0 = pattern(100_000, 99);
        let got = Rc::new(RefCell::new(Vec::new()));
        let mut executor = Executor::new(&world);
        executor.spawn("backend", backend(back, to_guest.clone(), to_dom0.len(), got.clone(), true));
        let expected_in = to_guest.len();
        let taken = got.clone();
        let received = executor.spawn("console", async move {
            let console = Console::connect(&front, 3).await.unwrap();
            console.write(&to_dom0[..10]).await.unwrap();
            let mut received = Vec::new();
            let mut written = 10;
            while received.len() < expected_in || written < to_dom0.len() {
                if written < to_dom0.len() {
                    let end = (written + 3000).min(to_dom0.len());
                    console.write(&to_dom0[written..end]).await.unwrap();
                    written = end;
                }
                let mut buf = [0u8; 512];
                let n = console.read(&mut buf, Duration::from_millis(10)).await.unwrap();
                received.extend_from_slice(&buf[..n]);
            }
            // Once drained, dom0 holds every byte written.
            console.drain().await.unwrap();
            assert_eq!(taken.borrow().len(), 100_000);
            console.close().await.unwrap();
            received
        });
        executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
        assert_eq!(received.take().unwrap(), to_guest);
        assert_eq!(*got.borrow(), pattern(100_000, 99));
        assert_eq!(world.dangling_grants(), []);
        assert_eq!(world.grants(FRONT), []);
    }

    #[test]
    fn a_backend_that_stops_reading_stalls_the_writer_with_an_error() {
        let world = World::new();
        world.toolstack(DEVICE, &[]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        let got = Rc::new(RefCell::new(Vec::new()));
        let mut executor = Executor::new(&world);
        executor.spawn_background("backend", backend(back, Vec::new(), 0, got, false));
        let result = executor.spawn("console", async move {
            let console = Console::connect(&front, 3).await.unwrap();
            console.write(&pattern(100, 1)).await.unwrap();
            assert_eq!(console.drain().await, Err(ConsoleError::Stalled));
            console.write(&pattern(10_000, 1)).await
        });
        executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
        assert_eq!(result.take(), Some(Err(ConsoleError::Stalled)));
        assert!(world.now_ns() >= WRITE_WAIT.as_nanos() as u64);
    }

    #[test]
    fn corrupt_indexes_are_an_error() {
        let world = World::new();
        world.toolstack(DEVICE, &[]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        let mut executor = Executor::new(&world);
        let result = executor.spawn("console", async move {
            let console = Console::connect(&front, 3).await.unwrap();
            let mut buf = [0u8; 16];
            console.read(&mut buf, Duration::from_secs(1)).await
        });
        executor.spawn_background("hostile backend", async move {
            while back.read_string(Tx::NONE, &format!("{FRONT_NODE}/state")).await.as_deref() != Ok("3") {
                xen_seams::Clock::sleep(&back, Duration::from_millis(1)).await;
            }
            let gref = number(&back, &format!("{FRONT_NODE}/ring-ref")).await;
            let ring = back.map_grant(FRONT, GrantRef(gref), true).unwrap();
            ring.write_u32(ring::IN_PROD_OFFSET, 5000);
            back.write(Tx::NONE, &format!("{BACK_NODE}/state"), b"4").await.unwrap();
            xen_seams::Clock::sleep(&back, Duration::from_secs(60)).await;
            let _: String = String::new();
        });
        executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
        assert_eq!(result.take(), Some(Err(ConsoleError::CorruptRing)));
    }
}
