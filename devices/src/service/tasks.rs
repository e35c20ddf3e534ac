//! The device model's tasks (see the module doc of [`super`]): each runs on its own,
//! woken only by what it waits for.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use frontends::blkfront::Disk;
use frontends::console::Console;
use frontends::netfront::{NetError, Netfront};
use frontends::vchan::{Server, VchanError};
use frontends::xenbus::{DeviceEvent, DeviceWatch};
use qmp::{Session, SlowEffect, VersionInfo};
use xen_seams::Xen;
use xen_seams::hvm::{DeviceModelHost, IoreqServer};

use super::{BLOCK_IO_LIMIT, SAVE_CONSOLE, ServiceError, Shared, block_failure, is_client_fault};
use crate::dirty::DirtyLogged;
use crate::ide::{BlockOp, BlockOutcome, DriveId, SgEntry, bmdma};
use crate::nic::RxOutcome;
use crate::platform::PlatformWait;
use crate::task::{Either, first};

/// How long a vCPU's request may wait for its event before the ioreq page is looked at
/// anyway. Xen notifies each request; should one notification ever be lost, the guest's
/// vCPU (held in Xen until we answer) would otherwise wait for ever.
pub(super) const IOREQ_RECHECK: Duration = Duration::from_secs(1);

/// Answers vCPU `vcpu`'s requests, one at a time, for as long as the service runs.
/// While the VM is paused (QMP `stop`) a request waits, and so does the vCPU.
pub(super) async fn serve_vcpu<X: Xen + DeviceModelHost + 'static>(shared: Rc<Shared<X>>, vcpu: u32) {
    let (Some(server), Some(machine), Some(memory), Some(control)) =
        (&shared.server, &shared.machine, &shared.memory, &shared.control)
    else {
        return;
    };
    let mut notified = true;
    loop {
        let Some(request) = server.pending(vcpu) else {
            let woken = first(server.wait(vcpu), first(shared.xen.sleep(IOREQ_RECHECK), shared.stopping.wait()));
            match woken.await {
                Either::First(()) => notified = true,
                Either::Second(Either::First(())) => notified = false,
                Either::Second(Either::Second(())) => return,
            }
            continue;
        };
        if !notified {
            shared.lost_ioreq_events.set(shared.lost_ioreq_events.get() + 1);
            if shared.log.borrow_mut().allow() {
                log::warn!(
                    "ioreq: vCPU {vcpu}'s request ({:?} at {:#x}) was found after {} ms without its event ({} so far)",
                    request.kind,
                    request.addr,
                    IOREQ_RECHECK.as_millis(),
                    shared.lost_ioreq_events.get()
                );
            }
            notified = true;
        }
        // A request the platform device cannot answer yet (a log write without its
        // tokens, a magic read before the blacklist answer) waits here, and so does a
        // log write while the device-model log is behind (logging itself never waits,
        // so text past the log's backlog would be lost): only this vCPU waits, every
        // other task carries on. Then, while the VM is paused, it waits for the VM to
        // run (nothing changes the machine while it is paused).
        loop {
            let now = shared.xen.now_ns();
            let log_behind = shared.xen.log_backlog_bytes() > GUEST_LOG_BACKLOG_LIMIT_BYTES;
            let limit = if log_behind && machine.borrow().is_log_write(&request) {
                LOG_BACKLOG_POLL
            } else {
                let Some(wait) = machine.borrow_mut().ioreq_wait(&request, now) else { break };
                match wait {
                    PlatformWait::Tokens { until_ns } => Duration::from_nanos(until_ns.saturating_sub(now)),
                    PlatformWait::Blacklist => BLACKLIST_POLL,
                }
            };
            if let Either::Second(()) = first(shared.xen.sleep(limit), shared.stopping.wait()).await {
                return;
            }
        }
        shared.running.wait().await;
        let memory = DirtyLogged::new(memory, control, shared.vm.borrow().dirty_log());
        let data = machine.borrow_mut().handle_ioreq(&request, &memory, shared.xen.now_ns());
        shared.after_machine_change();
        if let Err(error) = server.respond(vcpu, data) {
            shared.fail(ServiceError::IoreqServer { guest: shared.guest, error });
            return;
        }
    }
}

/// How often a magic read waiting for the blacklist answer looks again.
const BLACKLIST_POLL: Duration = Duration::from_millis(10);

/// A guest log write waits while the log holds back more than this: one write (a
/// `rep outsb` of up to a page, some 400 lines of log) then still fits in the console's
/// backlog with room to spare for the device model's own lines.
pub const GUEST_LOG_BACKLOG_LIMIT_BYTES: usize = 8 << 10;

/// How often a log write held by the log's backlog looks again.
const LOG_BACKLOG_POLL: Duration = Duration::from_millis(10);

/// How long the blacklist lookup may take in xenstore before the driver counts as not
/// blacklisted.
const BLACKLIST_LOOKUP_LIMIT: Duration = Duration::from_secs(5);

/// The platform device's blacklist lookups: each `/mh/driver-blacklist/<product>/<build>`
/// the guest's driver names is read from xenstore (it exists: blacklisted; absent,
/// unreadable or too slow: not), and the answer goes back to the device.
pub(super) async fn platform<X: Xen + DeviceModelHost + 'static>(shared: Rc<Shared<X>>) {
    let Some(machine) = shared.machine.clone() else { return };
    loop {
        if let Either::Second(()) = first(shared.platform_wake.wait(), shared.stopping.wait()).await {
            return;
        }
        let Some(query) = machine.borrow_mut().take_blacklist_query() else { continue };
        let read = shared.xen.timeout(BLACKLIST_LOOKUP_LIMIT, shared.xen.read(xen_seams::Tx::NONE, &query.path)).await;
        let blacklisted = match read {
            Ok(Ok(_)) => true,
            Ok(Err(e)) if e.is_missing() => false,
            Ok(Err(e)) => {
                log::warn!("platform: reading {}: {e}; the driver is not blacklisted", query.path);
                false
            }
            Err(_) => {
                log::warn!(
                    "platform: no answer for {} within {} s; the driver is not blacklisted",
                    query.path,
                    BLACKLIST_LOOKUP_LIMIT.as_secs()
                );
                false
            }
        };
        log::info!("platform: {} {}", query.path, if blacklisted { "exists: blacklisted" } else { "absent" });
        machine.borrow_mut().answer_blacklist(&query, blacklisted);
    }
}

/// Carries out the disk I/O of the IDE drive at `position` on the PV disk that holds
/// its medium, one request at a time, each bounded by [`BLOCK_IO_LIMIT`].
pub(super) async fn block_worker<X: Xen + DeviceModelHost + 'static>(shared: Rc<Shared<X>>, position: DriveId) {
    let Some(drive) = shared.drive(position) else { return };
    let Some(machine) = shared.machine.clone() else { return };
    loop {
        let request = match first(drive.mailbox.take(), shared.stopping.wait()).await {
            Either::First(request) => request,
            Either::Second(()) => return,
        };
        let disk = {
            let vm = shared.vm.borrow();
            let medium = vm.block().drive(drive.devid).and_then(|d| d.medium()).map(|m| m.pv_devid);
            medium.and_then(|pv| shared.disks.borrow().get(&pv).cloned())
        };
        let outcome = match disk {
            Some(disk) => carry_out_block(&shared, &disk, request.op).await,
            None => {
                if shared.log.borrow_mut().allow() {
                    log::warn!("drive ide-{}: no PV disk behind the medium; the command fails", drive.devid);
                }
                BlockOutcome::Failed
            }
        };
        {
            let mut m = machine.borrow_mut();
            m.ide_mut().complete(position, outcome);
            m.sync_irqs();
        }
        shared.after_machine_change();
    }
}

async fn carry_out_block<X: Xen + DeviceModelHost + 'static>(
    shared: &Shared<X>,
    disk: &Disk<'static, X>,
    op: BlockOp,
) -> BlockOutcome {
    let xen = shared.xen;
    let (what, result) = match op {
        BlockOp::DmaRead { sector, nr_sectors, sg } => {
            return dma_to_guest(shared, disk, sector, nr_sectors, &sg).await;
        }
        BlockOp::DmaWrite { sector, nr_sectors, sg, flush } => {
            return dma_from_guest(shared, disk, sector, nr_sectors, &sg, flush).await;
        }
        BlockOp::Read { sector, nr_sectors } => {
            let mut data = vec![0u8; nr_sectors as usize * 512];
            match xen.timeout(BLOCK_IO_LIMIT, disk.read(sector, &mut data)).await {
                Ok(Ok(())) => return BlockOutcome::Read(data),
                Ok(Err(e)) => (format!("read of {nr_sectors} sector(s) at {sector}"), Ok(e)),
                Err(t) => (format!("read of {nr_sectors} sector(s) at {sector}"), Err(t)),
            }
        }
        BlockOp::Write { sector, data } => match xen.timeout(BLOCK_IO_LIMIT, disk.write(sector, &data)).await {
            Ok(Ok(())) => return BlockOutcome::Written,
            Ok(Err(e)) => (format!("write of {} byte(s) at sector {sector}", data.len()), Ok(e)),
            Err(t) => (format!("write of {} byte(s) at sector {sector}", data.len()), Err(t)),
        },
        BlockOp::Flush => match xen.timeout(BLOCK_IO_LIMIT, disk.flush()).await {
            Ok(Ok(())) => return BlockOutcome::Flushed,
            Ok(Err(e)) => (String::from("flush"), Ok(e)),
            Err(t) => (String::from("flush"), Err(t)),
        },
    };
    if shared.log.borrow_mut().allow() {
        log::warn!("PV disk {}: {what} failed: {}", disk.devid(), block_failure(result));
    }
    BlockOutcome::Failed
}

/// The most a DMA transfer moves per PV disk call: blkfront cuts each call into as many
/// ring requests as its page budget (1 MiB) allows, all in flight at once, so one call of
/// this size keeps several requests in flight while the stub domain's memory stays small.
pub const DMA_CHUNK_BYTES: u64 = 256 * 1024;

/// A PV disk call bounded by [`BLOCK_IO_LIMIT`]; Err says why it failed.
async fn bounded_io<X: Xen>(
    xen: &X,
    io: impl core::future::Future<Output = Result<(), frontends::blkfront::Error>>,
) -> Result<(), String> {
    match xen.timeout(BLOCK_IO_LIMIT, io).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(block_failure(Ok(e))),
        Err(t) => Err(block_failure(Err(t))),
    }
}

/// Logs (bounded) a DMA step that failed and gives the outcome.
fn dma_failed<X: Xen + DeviceModelHost + 'static>(
    shared: &Shared<X>,
    disk: &Disk<'static, X>,
    what: String,
    outcome: BlockOutcome,
) -> BlockOutcome {
    if shared.log.borrow_mut().allow() {
        log::warn!("PV disk {}: DMA {what} failed", disk.devid());
    }
    outcome
}

/// READ DMA: the sectors from the PV disk straight into guest memory, a chunk at a time;
/// the pages written are reported while the dirty log is on.
async fn dma_to_guest<X: Xen + DeviceModelHost + 'static>(
    shared: &Shared<X>,
    disk: &Disk<'static, X>,
    sector: u64,
    nr_sectors: u32,
    sg: &[SgEntry],
) -> BlockOutcome {
    let (Some(memory), Some(control)) = (&shared.memory, &shared.control) else { return BlockOutcome::Failed };
    let total_bytes = u64::from(nr_sectors) * 512;
    let mut chunk = vec![0u8; total_bytes.min(DMA_CHUNK_BYTES) as usize];
    let mut done_bytes = 0u64;
    while done_bytes < total_bytes {
        let len_bytes = (total_bytes - done_bytes).min(DMA_CHUNK_BYTES) as usize;
        let at = sector + done_bytes / 512;
        let buf = &mut chunk[..len_bytes];
        if let Err(why) = bounded_io(shared.xen, disk.read(at, buf)).await {
            return dma_failed(shared, disk, format!("read at {at}: {why}"), BlockOutcome::Failed);
        }
        let logged = DirtyLogged::new(memory, control, shared.vm.borrow().dirty_log());
        if let Err(e) = bmdma::scatter(&logged, sg, done_bytes, buf) {
            return dma_failed(shared, disk, format!("into guest memory: {e:?}"), BlockOutcome::GuestMemoryFault);
        }
        done_bytes += len_bytes as u64;
    }
    BlockOutcome::Transferred
}

/// WRITE DMA: guest memory straight onto the PV disk, a chunk at a time, then a flush
/// when the drive's write cache is off.
async fn dma_from_guest<X: Xen + DeviceModelHost + 'static>(
    shared: &Shared<X>,
    disk: &Disk<'static, X>,
    sector: u64,
    nr_sectors: u32,
    sg: &[SgEntry],
    flush: bool,
) -> BlockOutcome {
    let Some(memory) = &shared.memory else { return BlockOutcome::Failed };
    let total_bytes = u64::from(nr_sectors) * 512;
    let mut chunk = vec![0u8; total_bytes.min(DMA_CHUNK_BYTES) as usize];
    let mut done_bytes = 0u64;
    while done_bytes < total_bytes {
        let len_bytes = (total_bytes - done_bytes).min(DMA_CHUNK_BYTES) as usize;
        let at = sector + done_bytes / 512;
        let buf = &mut chunk[..len_bytes];
        if let Err(e) = bmdma::gather(memory, sg, done_bytes, buf) {
            return dma_failed(shared, disk, format!("from guest memory: {e:?}"), BlockOutcome::GuestMemoryFault);
        }
        if let Err(why) = bounded_io(shared.xen, disk.write(at, buf)).await {
            return dma_failed(shared, disk, format!("write at {at}: {why}"), BlockOutcome::Failed);
        }
        done_bytes += len_bytes as u64;
    }
    if flush && let Err(why) = bounded_io(shared.xen, disk.flush()).await {
        return dma_failed(shared, disk, format!("flush: {why}"), BlockOutcome::Failed);
    }
    BlockOutcome::Transferred
}

/// COM1 to and from the guest's serial console: what the guest transmits goes to the
/// console; what dom0 sends waits (bounded by the console ring) until the UART's FIFO
/// has room.
pub(super) async fn serial<X: Xen + DeviceModelHost + 'static>(shared: Rc<Shared<X>>, console: Console<'static, X>) {
    const HELD_INPUT_LIMIT: usize = 256;
    let Some(machine) = shared.machine.clone() else { return };
    let mut input: Vec<u8> = Vec::new();
    let mut buf = [0u8; HELD_INPUT_LIMIT];
    while !shared.stopping.is_on() {
        let (output, effects) = {
            let mut m = machine.borrow_mut();
            let output = m.com1_mut().map(|u| u.take_output(4096)).unwrap_or_default();
            if !input.is_empty() {
                let accepted = m.com1_mut().map_or(input.len(), |u| u.receive(&input));
                input.drain(..accepted);
                shared.serial_taken_bytes.set(shared.serial_taken_bytes.get() + accepted as u64);
            }
            m.sync_irqs();
            (output, m.take_effects())
        };
        shared.serial_holds_input.set(!input.is_empty());
        // Only COM1 changed: its interrupt line is all there is to apply. (Waking this
        // task from here would make it its own busy loop.)
        shared.apply(effects);
        if !output.is_empty() {
            if let Err(e) = console.write(&output).await
                && shared.log.borrow_mut().allow()
            {
                log::warn!("COM1: {} byte(s) for the serial console lost: {e}", output.len());
            }
            continue;
        }
        if !input.is_empty() {
            // The guest has to read before more fits: the ioreq task wakes us when its
            // FIFO has room (or it transmitted).
            shared.serial_wake.wait().await;
            continue;
        }
        match first(console.read(&mut buf, Duration::from_secs(60)), shared.serial_wake.wait()).await {
            Either::First(Ok(n)) => {
                input.extend_from_slice(&buf[..n]);
                shared.serial_in_bytes.set(shared.serial_in_bytes.get() + n as u64);
            }
            Either::First(Err(e)) => {
                if shared.log.borrow_mut().allow() {
                    log::warn!("COM1: the serial console failed: {e}");
                }
                shared.xen.sleep(Duration::from_secs(1)).await;
            }
            Either::Second(()) => {}
        }
    }
}

/// PV disks dom0 attaches later (a CD-ROM change) get connected and their fdset.
pub(super) async fn hotplug<X: Xen + DeviceModelHost + 'static>(
    shared: Rc<Shared<X>>,
    mut watch: DeviceWatch<'static, X>,
) {
    loop {
        let event = match first(watch.next(Duration::from_secs(60)), shared.stopping.wait()).await {
            Either::First(event) => event,
            Either::Second(()) => return,
        };
        match event {
            Ok(Some(DeviceEvent::Added(devid))) => {
                shared.connect_disk(devid).await;
                shared.qmp_events.notify();
            }
            Ok(Some(DeviceEvent::Removed(devid))) => log::info!("PV disk {devid}: removed"),
            Ok(None) => {}
            Err(e) => {
                shared.fail(ServiceError::DeviceWatch(e));
                return;
            }
        }
    }
}

/// Waits for PV disk `devid`'s backend to go away (a detach), then drops its medium
/// and closes our side so that the detach completes.
pub(super) async fn watch_detach<X: Xen + DeviceModelHost + 'static>(
    shared: Rc<Shared<X>>,
    devid: u32,
    disk: Rc<Disk<'static, X>>,
) {
    let reason = match first(disk.watch_backend(), shared.stopping.wait()).await {
        Either::First(reason) => reason,
        Either::Second(()) => return,
    };
    log::info!("PV disk {devid}: detached ({reason})");
    shared.disks.borrow_mut().remove(&devid);
    shared.vm.borrow_mut().pv_disk_disconnected(devid);
    shared.sync_media();
    shared.qmp_events.notify();
    // A worker may still hold the disk for a request that is failing now.
    let mut disk = disk;
    for _ in 0..20 {
        match Rc::try_unwrap(disk) {
            Ok(owned) => {
                let _ = owned.close().await;
                return;
            }
            Err(shared_disk) => disk = shared_disk,
        }
        shared.xen.sleep(Duration::from_millis(50)).await;
    }
    log::warn!("PV disk {devid}: still in use after the detach; dropped");
}

/// How one QMP client's connection ended.
enum ClientEnd {
    Left,
    Quit,
}

/// Serves QMP clients one after another until `quit`. A client's own faults end its
/// connection only.
pub(super) async fn qmp<X: Xen + DeviceModelHost + 'static>(
    shared: Rc<Shared<X>>,
    mut server: Server<'static, X>,
    save_console: Option<Console<'static, X>>,
    path: String,
) {
    let result = serve_clients(&shared, &mut server, save_console.as_ref()).await;
    match result {
        Ok(()) => shared.stopping.set(),
        Err(error) => shared.fail(ServiceError::Vchan { path, error }),
    }
    let _ = server.shutdown().await;
    if let Some(console) = save_console {
        let _ = console.close().await;
    }
}

async fn serve_clients<X: Xen + DeviceModelHost + 'static>(
    shared: &Shared<X>,
    server: &mut Server<'static, X>,
    save_console: Option<&Console<'static, X>>,
) -> Result<(), VchanError> {
    while !shared.stopping.is_on() {
        let accepted = match first(server.accept(Duration::from_secs(60)), shared.stopping.wait()).await {
            Either::First(accepted) => accepted,
            Either::Second(()) => return Ok(()),
        };
        match accepted {
            Ok(()) => {}
            Err(VchanError::NoClient) => continue,
            Err(e) if is_client_fault(&e) => {
                log::warn!("QMP: no new client yet: {e}");
                shared.xen.sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e),
        }
        let mut session = Session::open(&mut *shared.vm.borrow_mut(), &VersionInfo::default());
        match serve_client(shared, server, &mut session, save_console).await {
            Ok(ClientEnd::Left) => {}
            Ok(ClientEnd::Quit) => return Ok(()),
            Err(e) if is_client_fault(&e) => {
                log::warn!("QMP: client dropped: {e}");
                server.disconnect();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn serve_client<X: Xen + DeviceModelHost + 'static>(
    shared: &Shared<X>,
    server: &mut Server<'static, X>,
    session: &mut Session,
    save_console: Option<&Console<'static, X>>,
) -> Result<ClientEnd, VchanError> {
    let mut buf = [0u8; 4096];
    loop {
        let output = session.take_output();
        if !output.is_empty() {
            match server.write_all(&output).await {
                Ok(()) => {}
                Err(VchanError::Timeout) => {
                    // The client stopped reading. Hanging up now would leave
                    // vchan-socket-proxy with replies it can never deliver (it exits
                    // when that client then closes, and libxl loses its QMP socket):
                    // instead drop this client's replies and keep taking its input
                    // until it goes away, then serve the next one.
                    log::warn!(
                        "QMP: client dropped: it read nothing for {} s; its replies are discarded until it leaves",
                        server.write_timeout.as_secs()
                    );
                    return discard_until_closed(shared, server).await;
                }
                Err(e) => return Err(e),
            }
        }
        if session.is_closed() {
            return Ok(ClientEnd::Quit);
        }
        if let Some(effect) = session.take_effect() {
            let result = match effect {
                // The Vm framed an empty payload: the devices' state is the machine's.
                SlowEffect::WriteStateFile { console, data } => match shared.machine_state_file().await {
                    Ok(file) => {
                        carry_out(SlowEffect::WriteStateFile { console, data: file.unwrap_or(data) }, save_console)
                            .await
                    }
                    Err(e) => Err(e),
                },
                SlowEffect::Quiesce => shared.wait_disks_idle().await,
            };
            session.complete(&mut *shared.vm.borrow_mut(), result, (shared.now)());
            shared.sync_media();
            continue;
        }
        match first(server.read(&mut buf), shared.qmp_events.wait()).await {
            Either::First(Ok(n)) => {
                session.feed(&mut *shared.vm.borrow_mut(), &buf[..n], (shared.now)());
                shared.sync_media();
            }
            // Nothing arrived for a while: keep waiting.
            Either::First(Err(VchanError::Timeout)) => {}
            Either::First(Err(VchanError::Closed)) => return Ok(ClientEnd::Left),
            Either::First(Err(e)) => return Err(e),
            Either::Second(()) => session.deliver_events(&mut *shared.vm.borrow_mut()),
        }
    }
}

/// Reads and drops what a dropped client still sends until it closes (or the service
/// stops).
async fn discard_until_closed<X: Xen + DeviceModelHost + 'static>(
    shared: &Shared<X>,
    server: &mut Server<'static, X>,
) -> Result<ClientEnd, VchanError> {
    let mut buf = [0u8; 4096];
    loop {
        match first(server.read(&mut buf), shared.stopping.wait()).await {
            Either::First(Ok(_) | Err(VchanError::Timeout)) => {}
            Either::First(Err(VchanError::Closed)) => return Ok(ClientEnd::Left),
            Either::First(Err(e)) => return Err(e),
            Either::Second(()) => return Ok(ClientEnd::Left),
        }
    }
}

/// A command's slow work: a state file written to its console and drained (dom0 has it).
async fn carry_out<X: Xen>(effect: SlowEffect, save_console: Option<&Console<'static, X>>) -> Result<(), String> {
    match effect {
        SlowEffect::WriteStateFile { console, data } => {
            let Some(channel) = save_console.filter(|_| console == SAVE_CONSOLE) else {
                return Err(format!("console {console} is not connected"));
            };
            channel.write(&data).await.map_err(|e| format!("console {console}: {e}"))?;
            channel.drain().await.map_err(|e| format!("console {console}: {e}"))?;
            log::info!("device model: {} bytes of state written to console {console}", data.len());
            Ok(())
        }
        SlowEffect::Quiesce => Ok(()),
    }
}

/// Every [`STATS_PERIOD`](super::STATS_PERIOD), if anything moved: how many ioreqs the
/// machine answered, how many were malformed, and COM1's losses, so that the log shows
/// the device model alive and what it has been doing.
pub(super) async fn stats<X: Xen + DeviceModelHost + 'static>(shared: Rc<Shared<X>>) {
    let Some(machine) = shared.machine.clone() else { return };
    let mut last = None;
    loop {
        if let Either::Second(()) = first(shared.xen.sleep(super::STATS_PERIOD), shared.stopping.wait()).await {
            return;
        }
        let now = {
            let m = machine.borrow();
            let raised = *shared.isa_raised.borrow();
            (
                m.stats(),
                m.com1().map(|u| u.stats()),
                shared.serial_in_bytes.get(),
                shared.serial_taken_bytes.get(),
                raised,
            )
        };
        if Some(now) != last {
            let (machine_stats, uart, serial_in, serial_taken, raised) = now;
            log::info!(
                "device model: {} ioreqs answered ({} malformed); COM1: {serial_in} bytes in, {serial_taken} taken \
                 by the guest, {:?}; IRQs raised: 4: {}, 14: {}, 15: {}",
                machine_stats.ioreqs,
                machine_stats.malformed,
                uart,
                raised[4],
                raised[14],
                raised[15]
            );
            last = Some(now);
        }
    }
}

/// NIC `index`'s frames both ways between the emulated card and the stub domain's vif
/// `devid` (same MAC): what the guest transmits goes to netfront (one frame waits while
/// every tx buffer is in flight; the card itself holds a bounded queue), frames from
/// the wire go into the guest's ring while it has room and are left in netfront's ring
/// (back pressure on netback) while it has none. Without a working vif the card reports
/// link down; the task connects again every [`VIF_RETRY`](super::VIF_RETRY).
pub(super) async fn network<X: Xen + DeviceModelHost + 'static>(
    shared: Rc<Shared<X>>,
    index: usize,
    devid: u32,
    mac: [u8; 6],
) {
    let (Some(machine), Some(memory), Some(control)) =
        (shared.machine.clone(), shared.memory.as_ref(), shared.control.as_ref())
    else {
        return;
    };
    let Some(wake) = shared.nic_wake.get(index) else { return };
    let xen = shared.xen;
    let set_link = |up: bool| {
        let effects = {
            let mut m = machine.borrow_mut();
            if let Some(nic) = m.nic_mut(index) {
                nic.set_link_up(up, xen.now_ns());
            }
            m.sync_irqs();
            m.take_effects()
        };
        shared.apply(effects);
    };
    while !shared.stopping.is_on() {
        if machine.borrow().nic_unplugged(index) {
            log::info!("NIC {index}: unplugged by the guest; vif {devid} is left alone");
            return;
        }
        let mut net = match Netfront::connect(xen, devid).await {
            Ok(net) => net,
            Err(e) => {
                if shared.log.borrow_mut().allow() {
                    log::warn!("NIC {index}: vif {devid} is not usable ({e}); the link is down");
                }
                set_link(false);
                if let Either::Second(()) = first(xen.sleep(super::VIF_RETRY), shared.stopping.wait()).await {
                    return;
                }
                continue;
            }
        };
        if net.mac() != mac {
            log::warn!("NIC {index}: vif {devid}'s MAC {:02x?} differs from the card's {mac:02x?}", net.mac());
        }
        log::info!("NIC {index}: bridged to vif {devid}");
        set_link(true);
        let failure = bridge(&shared, &machine, (memory, control), wake, index, &mut net).await;
        set_link(false);
        let _ = net.close().await;
        match failure {
            None => return,
            Some(e) => {
                log::warn!("NIC {index}: vif {devid} failed ({e}); the link is down until it is back");
                if let Either::Second(()) = first(xen.sleep(super::VIF_RETRY), shared.stopping.wait()).await {
                    return;
                }
            }
        }
    }
}

/// Moves frames until the service stops (None) or the vif fails (its error).
async fn bridge<X: Xen + DeviceModelHost + 'static>(
    shared: &Shared<X>,
    machine: &core::cell::RefCell<crate::machine::Machine>,
    (memory, control): (&X::Memory, &X::Control),
    wake: &crate::task::Notify,
    index: usize,
    net: &mut Netfront<'static, X>,
) -> Option<NetError> {
    let xen = shared.xen;
    let mut waiting_tx: Option<Vec<u8>> = None;
    // A frame the card found no room for: offered again before any newer one.
    let mut waiting_rx: Option<Vec<u8>> = None;
    let mut next_stats_ns = xen.now_ns().saturating_add(super::STATS_PERIOD.as_nanos() as u64);
    let mut last_stats = None;
    while !shared.stopping.is_on() {
        if machine.borrow().nic_unplugged(index) {
            log::info!("NIC {index}: unplugged by the guest; its bridge ends");
            return None;
        }
        // Every STATS_PERIOD, if anything moved: the card's and the vif's counters, so
        // that the log shows where frames stop.
        if xen.now_ns() >= next_stats_ns {
            next_stats_ns = xen.now_ns().saturating_add(super::STATS_PERIOD.as_nanos() as u64);
            let now = (
                machine.borrow().nic(index).map(|nic| nic.stats()),
                net.stats(),
                waiting_tx.is_some(),
                waiting_rx.is_some(),
            );
            if Some(now) != last_stats {
                log::info!(
                    "NIC {index}: card {:?}; vif {:?}; a frame waits for tx room: {}, for rx room: {}",
                    now.0,
                    now.1,
                    now.2,
                    now.3
                );
                last_stats = Some(now);
            }
        }
        // The guest's frames to the wire.
        loop {
            let frame = match waiting_tx.take() {
                Some(frame) => Some(frame),
                None => machine.borrow_mut().nic_mut(index).and_then(|nic| nic.take_tx_frame()),
            };
            let Some(frame) = frame else { break };
            match net.send(&frame) {
                Ok(()) => {}
                Err(NetError::TxFull) => {
                    waiting_tx = Some(frame);
                    break;
                }
                Err(NetError::FrameSize { len }) => {
                    if shared.log.borrow_mut().allow() {
                        log::warn!("NIC {index}: a {len}-byte frame from the guest cannot be sent; dropped");
                    }
                }
                Err(e) => return Some(e),
            }
        }
        // The wire's frames to the guest, while its ring has room.
        let mut room;
        loop {
            room = machine.borrow().nic(index).is_some_and(|nic| nic.can_receive());
            if !room {
                break;
            }
            let frame = match waiting_rx.take() {
                Some(frame) => frame,
                None => match net.receive() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return Some(e),
                },
            };
            let memory = DirtyLogged::new(memory, control, shared.vm.borrow().dirty_log());
            let outcome = machine.borrow_mut().nic_mut(index).map(|nic| nic.receive(&frame, &memory, xen.now_ns()));
            if outcome == Some(RxOutcome::NoBuffer) {
                // The card found its ring full (an overflow interrupt, so that the
                // driver looks at its ring). The frame is kept and offered again once
                // the guest has read (a register write wakes us), and the rest wait
                // with netback: a lost frame costs a TCP sender a retransmission, the
                // bed saw 54 in 10 MiB to an 8139too guest.
                waiting_rx = Some(frame);
                room = false;
                break;
            }
        }
        // Timers, interrupts.
        let deadline = {
            let mut m = machine.borrow_mut();
            let now = xen.now_ns();
            let mut deadline = None;
            if let Some(nic) = m.nic_mut(index) {
                if nic.next_deadline_ns().is_some_and(|d| d <= now) {
                    nic.tick(now);
                }
                deadline = nic.next_deadline_ns();
            }
            m.sync_irqs();
            let effects = m.take_effects();
            drop(m);
            shared.apply(effects);
            deadline
        };
        let now = xen.now_ns();
        let limit = deadline.map_or(Duration::from_secs(1), |d| Duration::from_nanos(d.saturating_sub(now)));
        let limit = limit.min(Duration::from_secs(1));
        if room {
            // Woken by a frame from the wire, tx room, the guest, or a timer.
            match first(net.wait(limit), first(wake.wait(), shared.stopping.wait())).await {
                Either::First(Err(e)) => return Some(e),
                Either::First(Ok(_)) | Either::Second(_) => {}
            }
        } else {
            // The guest's ring is full: frames stay with netback until the guest reads.
            let short = if waiting_tx.is_some() { limit.min(Duration::from_millis(10)) } else { limit };
            let _ = first(xen.sleep(short), first(wake.wait(), shared.stopping.wait())).await;
        }
    }
    None
}
