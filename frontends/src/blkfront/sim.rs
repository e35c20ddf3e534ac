//! A blkback for host tests (feature `sim`): serves a disk held in memory to a
//! [`Disk`](super::Disk) in the simulated Xen, through grant mappings, as Linux's
//! blkback does (one-page or multi-page rings, persistent grants, indirect requests,
//! flush, barrier, discard), with the faults of [`Fault`] to inject.
//!
//! ```text
//! let world = World::new();
//! let device = PvDevice { kind: "vbd", devid: 768, frontend: 5, backend: 0 };
//! world.toolstack(device, &[]);                               // what xl writes first
//! let backend = Backend::new(world.domain(0), device, Config::default(), vec![0; 8 << 20]);
//! let log = backend.log();                                    // the disk's bytes, what it saw
//! executor.spawn_background("blkback", backend.run());
//! let disk = Disk::connect(&world.domain(5), 768, Options::default()).await?;
//! ```
//!
//! The backend publishes its features and InitWait, waits for the frontend's
//! Initialised, maps the ring and binds the event channel, publishes the geometry
//! (`sectors` is the disk's length in 512-byte sectors) and Connected, then serves
//! requests until the frontend closes (it answers Closed and unmaps everything) or a
//! fault ends it.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::{Future, poll_fn};
use core::pin::pin;
use core::task::Poll;
use core::time::Duration;

use xen_seams::sim::{MappedPage, PvDevice, SimXen};
use xen_seams::{Clock, DomId, EventChannels, GrantRef, Port, SharedPage, Xenstore, XenstoreWatch};

use crate::blkif::{
    self, Operation, REQUEST_LEN, RESPONSE_LEN, Request, RequestRepr, Response, ResponseRepr, Segment, Status,
};
use crate::ring::{BackRing, Geometry};

/// What the backend does wrong, and at which request (counted from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answers with id 9999.
    UnknownId(usize),
    /// Answers with the previous response's id.
    Duplicate(usize),
    /// Answers with 16 bytes of 0xa5.
    Garbage(usize),
    /// From this request on, every push claims 5 responses more than it wrote.
    ExtraResponses(usize),
    /// Answers with operation "write".
    WrongOperation(usize),
    /// Answers with status 7.
    BadStatus(usize),
    /// Answers BLKIF_RSP_ERROR.
    IoError(usize),
    /// Never answers this request or any later one.
    Silent(usize),
    /// Goes to Closing instead of answering (the dom0 side of `xl block-detach`).
    Close(usize),
    /// Its directory is removed instead of answering; it unmaps 5 ms later.
    Vanish(usize),
    /// Maps the ring, then goes to Closing instead of Connected.
    RefuseConnect,
}

/// What the backend publishes and how it behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `sector-size`: the logical block size in bytes.
    pub sector_size: u32,
    /// `info` (`VDISK_*` bits).
    pub info: u32,
    /// `mode`: "w" or "r".
    pub mode: &'static str,
    /// `max-ring-page-order`, if offered.
    pub max_ring_page_order: Option<u32>,
    /// `feature-persistent`: keeps a granted page mapped once it saw it.
    pub persistent: bool,
    /// `feature-max-indirect-segments`, if offered.
    pub max_indirect: Option<u32>,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `feature-discard` (granularity 4096): a discard zeroes the range.
    pub discard: bool,
    /// Answers a flush with EOPNOTSUPP although it offered one.
    pub refuse_flush: bool,
    /// Answers each batch in reverse order.
    pub reverse: bool,
    /// Answers before unmapping: a request's pages stay mapped until the next wake.
    pub unmap_late: bool,
    pub fault: Fault,
    /// How long it takes to answer each batch of requests (a slow disk).
    pub latency: Option<Duration>,
}

impl Default for Config {
    /// A writable disk of 512-byte sectors with flush, one-page rings, no persistent
    /// grants, no indirect requests, no discard, no fault.
    fn default() -> Self {
        Config {
            sector_size: 512,
            info: 0,
            mode: "w",
            max_ring_page_order: None,
            persistent: false,
            max_indirect: None,
            flush: true,
            barrier: false,
            discard: false,
            refuse_flush: false,
            reverse: false,
            unmap_late: false,
            fault: Fault::None,
            latency: None,
        }
    }
}

/// One request as the backend saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub operation: Operation,
    pub indirect: bool,
    pub nr_segments: usize,
    pub sector: u64,
    pub nr_sectors: u64,
}

/// What the backend saw and holds.
#[derive(Debug, Default)]
pub struct Log {
    /// The disk's bytes.
    pub disk: Vec<u8>,
    /// Every request served, in order.
    pub seen: Vec<Seen>,
    /// The most requests pushed and not yet answered, as the backend saw it.
    pub max_in_flight: u32,
    /// The frontend's nodes when it was Initialised.
    pub front: BTreeMap<String, String>,
    /// Every grant reference a data segment named.
    pub data_grefs: BTreeSet<u32>,
    /// Persistent grants were negotiated.
    pub persistent: bool,
    /// Unmapped everything and closed its port.
    pub finished: bool,
}

/// A blkback for one vbd: see the module doc.
pub struct Backend {
    xen: SimXen,
    frontend: DomId,
    front_path: String,
    back_path: String,
    config: Config,
    log: Rc<RefCell<Log>>,
}

/// The backend's side of one connection.
struct Connection {
    pages: Vec<MappedPage>,
    ring: BackRing,
    port: Port,
    persistent: bool,
    cache: BTreeMap<u32, MappedPage>,
    late: Vec<MappedPage>,
    received: usize,
    /// The id of the last request answered.
    previous_id: u64,
    stopped: bool,
}

enum After {
    Continue,
    Vanish,
}

enum Either<A, B> {
    Left(A),
    Right(B),
}

async fn select<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let (mut a, mut b) = (pin!(a), pin!(b));
    poll_fn(|cx| {
        if let Poll::Ready(value) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(value));
        }
        if let Poll::Ready(value) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(value));
        }
        Poll::Pending
    })
    .await
}

impl Backend {
    /// The backend of `device`, run by `xen` (the backend's domain), serving `disk`
    /// (whole 512-byte sectors). The toolstack's nodes must be there
    /// ([`World::toolstack`](xen_seams::sim::World::toolstack)) before it runs.
    pub fn new(xen: SimXen, device: PvDevice<'_>, config: Config, disk: Vec<u8>) -> Backend {
        let log = Rc::new(RefCell::new(Log { disk, ..Log::default() }));
        let (front_path, back_path) = (device.front_path(), device.back_path());
        Backend { xen, frontend: device.frontend, front_path, back_path, config, log }
    }

    /// What the backend saw and holds, shared with it while it runs.
    pub fn log(&self) -> Rc<RefCell<Log>> {
        self.log.clone()
    }

    fn write(&self, key: &str, value: &str) {
        let _ = self.xen.world().xenstore_write(&format!("{}/{key}", self.back_path), value.as_bytes());
    }

    fn front(&self, key: &str) -> Option<String> {
        let value = self.xen.world().xenstore_read(&format!("{}/{key}", self.front_path))?;
        Some(String::from_utf8(value).expect("the frontend writes text"))
    }

    fn front_number(&self, key: &str) -> u32 {
        let text = self.front(key).unwrap_or_else(|| panic!("frontend wrote no {key}"));
        text.parse().expect("the frontend writes decimal numbers")
    }

    /// Connects, serves, and disconnects when the frontend closes (or a fault ends it).
    pub async fn run(self) {
        let config = self.config.clone();
        if let Some(order) = config.max_ring_page_order {
            self.write("max-ring-page-order", &order.to_string());
        }
        if let Some(segments) = config.max_indirect {
            self.write("feature-max-indirect-segments", &segments.to_string());
        }
        self.write("state", "2");
        let watch = self.xen.watch(&format!("{}/state", self.front_path)).await.expect("a watch on the frontend");
        loop {
            match self.front("state").as_deref() {
                Some("3") => break,
                Some("5" | "6") | None => {
                    self.write("state", "6");
                    return;
                }
                _ => {}
            }
            if watch.next(Duration::from_secs(60)).await.is_err() {
                return;
            }
        }
        {
            let mut log = self.log.borrow_mut();
            for key in ["ring-ref", "ring-page-order", "event-channel", "protocol", "feature-persistent"] {
                if let Some(value) = self.front(key) {
                    log.front.insert(key.into(), value);
                }
            }
            for index in 0..16 {
                if let Some(value) = self.front(&format!("ring-ref{index}")) {
                    log.front.insert(format!("ring-ref{index}"), value);
                }
            }
        }
        let order = self.front("ring-page-order").map_or(0, |order| order.parse().expect("a decimal order"));
        let grefs: Vec<u32> = match order {
            0 => vec![self.front_number("ring-ref")],
            _ => (0..1 << order).map(|index| self.front_number(&format!("ring-ref{index}"))).collect(),
        };
        let map = |gref: &u32| self.xen.map_grant(self.frontend, GrantRef(*gref), true).expect("a ring grant");
        let pages = grefs.iter().map(map).collect();
        let remote_port = self.front_number("event-channel");
        let port = self.xen.bind_interdomain(self.frontend, remote_port).expect("the frontend's port");
        let persistent = config.persistent && self.front("feature-persistent").as_deref() == Some("1");
        self.log.borrow_mut().persistent = persistent;
        let mut connection = Connection {
            pages,
            ring: BackRing::new(Geometry::new(1 << order, blkif::RING_ENTRY_LEN)),
            port,
            persistent,
            cache: BTreeMap::new(),
            late: Vec::new(),
            received: 0,
            previous_id: u64::MAX,
            stopped: false,
        };
        if config.fault == Fault::RefuseConnect {
            self.write("state", "5");
            connection.stopped = true;
        } else {
            let sectors = self.log.borrow().disk.len() / 512;
            self.write("sectors", &sectors.to_string());
            self.write("sector-size", &config.sector_size.to_string());
            self.write("info", &config.info.to_string());
            self.write("mode", config.mode);
            self.write("feature-persistent", if config.persistent { "1" } else { "0" });
            self.write("feature-flush-cache", if config.flush { "1" } else { "0" });
            if config.barrier {
                self.write("feature-barrier", "1");
            }
            if config.discard {
                self.write("feature-discard", "1");
                self.write("discard-granularity", "4096");
                self.write("discard-alignment", "0");
            }
            self.write("state", "4");
        }
        loop {
            let wake = select(self.xen.wait(port), watch.next(Duration::from_secs(3600)));
            let woke = match connection.late.is_empty() {
                true => wake.await,
                // Pages answered but still mapped are unmapped a millisecond later.
                false => match select(wake, self.xen.sleep(Duration::from_millis(1))).await {
                    Either::Left(woke) => woke,
                    Either::Right(()) => {
                        connection.late.clear();
                        continue;
                    }
                },
            };
            match woke {
                Either::Left(()) if !connection.stopped => {
                    if let Some(latency) = self.config.latency {
                        self.xen.sleep(latency).await;
                    }
                    if let After::Vanish = self.serve(&mut connection) {
                        self.xen.world().xenstore_rm(&self.back_path).expect("the backend's directory");
                        self.xen.sleep(Duration::from_millis(5)).await;
                        break;
                    }
                }
                Either::Left(()) => {}
                Either::Right(Ok(_)) => match self.front("state").as_deref() {
                    Some("5") => self.write("state", "5"),
                    Some("6") | None => {
                        drop(connection);
                        self.xen.close(port).expect("the backend's port");
                        self.write("state", "6");
                        self.log.borrow_mut().finished = true;
                        return;
                    }
                    _ => {}
                },
                Either::Right(Err(_)) => return,
            }
        }
        drop(connection);
        self.xen.close(port).expect("the backend's port");
        self.log.borrow_mut().finished = true;
    }

    /// Serves what is on the ring, as blkback does, with the configured faults.
    fn serve(&self, connection: &mut Connection) -> After {
        let fault = self.config.fault;
        let mut after = After::Continue;
        loop {
            let pages = &connection.pages;
            let in_flight = connection.ring.requests_produced(pages).wrapping_sub(connection.ring.rsp_prod_pvt());
            let mut log = self.log.borrow_mut();
            log.max_in_flight = log.max_in_flight.max(in_flight);
            drop(log);
            let mut answers: Vec<[u8; RESPONSE_LEN]> = Vec::new();
            for _ in 0..connection.ring.unconsumed_requests(&connection.pages) {
                if connection.stopped {
                    break;
                }
                let mut entry = [0u8; REQUEST_LEN];
                connection.ring.read_request(&connection.pages, &mut entry);
                let index = connection.received;
                connection.received += 1;
                let request = Request::new_checked(&entry[..]).expect("a whole entry");
                let request = RequestRepr::parse(&request).expect("a valid request");
                match fault {
                    Fault::Silent(n) if n == index => connection.stopped = true,
                    Fault::Close(n) if n == index => {
                        connection.stopped = true;
                        self.write("state", "5");
                    }
                    Fault::Vanish(n) if n == index => {
                        connection.stopped = true;
                        after = After::Vanish;
                    }
                    _ => {}
                }
                if connection.stopped {
                    break;
                }
                let status = self.execute(connection, &request);
                let repr = ResponseRepr { id: request.id(), operation: request.response_operation(), status };
                let mut bytes = [0u8; RESPONSE_LEN];
                repr.emit(&mut Response::new_unchecked(&mut bytes[..]));
                let mut response = Response::new_unchecked(&mut bytes[..]);
                match fault {
                    Fault::UnknownId(n) if n == index => response.set_id(9999),
                    Fault::WrongOperation(n) if n == index => response.set_operation(blkif::OP_WRITE),
                    Fault::BadStatus(n) if n == index => response.set_status(7),
                    Fault::IoError(n) if n == index => response.set_status(blkif::RSP_ERROR),
                    Fault::Garbage(n) if n == index => bytes = [0xa5; RESPONSE_LEN],
                    _ => {}
                }
                if fault == Fault::Duplicate(index) {
                    Response::new_unchecked(&mut bytes[..]).set_id(connection.previous_id);
                }
                connection.previous_id = request.id();
                answers.push(bytes);
            }
            if self.config.reverse {
                answers.reverse();
            }
            for answer in &answers {
                connection.ring.write_response(&connection.pages, answer);
            }
            if matches!(fault, Fault::ExtraResponses(n) if n < connection.received) {
                connection.ring.claim_unwritten_responses(5);
            }
            if connection.ring.push_responses(&connection.pages) {
                self.xen.notify(connection.port).expect("the backend's port");
            }
            if connection.stopped || !connection.ring.final_check_for_requests(&connection.pages) {
                return after;
            }
        }
    }

    fn execute(&self, connection: &mut Connection, request: &RequestRepr) -> Status {
        let config = &self.config;
        let operation = request.response_operation();
        let mut seen = Seen { operation, indirect: false, nr_segments: 0, sector: 0, nr_sectors: 0 };
        let status = match *request {
            RequestRepr::Direct { operation: Operation::FlushDiskCache, .. } => {
                if config.flush && !config.refuse_flush { Status::Okay } else { Status::NotSupported }
            }
            RequestRepr::Direct { operation: Operation::WriteBarrier, .. } => {
                if config.barrier {
                    Status::Okay
                } else {
                    Status::NotSupported
                }
            }
            RequestRepr::Direct { operation, sector, nr_segments, segments, .. } => {
                (seen.sector, seen.nr_segments) = (sector, nr_segments);
                seen.nr_sectors = segments[..nr_segments].iter().map(|s| s.nr_sectors() as u64).sum();
                self.copy(connection, operation, sector, &segments[..nr_segments])
            }
            RequestRepr::Discard { sector, nr_sectors, .. } => {
                (seen.sector, seen.nr_sectors) = (sector, nr_sectors);
                let range = sector as usize * 512..(sector + nr_sectors) as usize * 512;
                match (config.discard, self.log.borrow_mut().disk.get_mut(range)) {
                    (true, Some(discarded)) => {
                        discarded.fill(0);
                        Status::Okay
                    }
                    (true, None) => Status::Error,
                    (false, _) => Status::NotSupported,
                }
            }
            RequestRepr::Indirect { operation, sector, nr_segments, indirect_grefs, .. } => {
                let mut segments = Vec::new();
                for index in 0..nr_segments {
                    let page = index / blkif::SEGMENTS_PER_INDIRECT_PAGE;
                    let mut bytes = [0u8; blkif::SEGMENT_LEN];
                    let offset = (index % blkif::SEGMENTS_PER_INDIRECT_PAGE) * blkif::SEGMENT_LEN;
                    self.with_page(connection, indirect_grefs[page], false, |page| page.read(offset, &mut bytes));
                    segments.push(Segment::parse(&bytes).expect("a valid indirect segment"));
                }
                seen.indirect = true;
                (seen.sector, seen.nr_segments) = (sector, nr_segments);
                seen.nr_sectors = segments.iter().map(|s| s.nr_sectors() as u64).sum();
                self.copy(connection, operation, sector, &segments)
            }
        };
        self.log.borrow_mut().seen.push(seen);
        status
    }

    fn copy(&self, connection: &mut Connection, operation: Operation, sector: u64, segments: &[Segment]) -> Status {
        let mut position = sector as usize * 512;
        for segment in segments {
            let len = segment.nr_sectors() * 512;
            let offset = usize::from(segment.first_sect) * 512;
            if position + len > self.log.borrow().disk.len() {
                return Status::Error;
            }
            self.log.borrow_mut().data_grefs.insert(segment.gref);
            let range = position..position + len;
            let log = &self.log;
            self.with_page(connection, segment.gref, operation == Operation::Read, |page| match operation {
                Operation::Read => page.write(offset, &log.borrow().disk[range]),
                _ => page.read(offset, &mut log.borrow_mut().disk[range]),
            });
            position += len;
        }
        Status::Okay
    }

    /// Maps a grant for `action`: kept mapped with persistent grants, unmapped
    /// after (or, with `unmap_late`, at the next wake) otherwise.
    fn with_page(&self, connection: &mut Connection, gref: u32, writable: bool, action: impl FnOnce(&MappedPage)) {
        if connection.persistent {
            let page = connection.cache.entry(gref).or_insert_with(|| {
                self.xen.map_grant(self.frontend, GrantRef(gref), true).expect("persistent grants are writable")
            });
            action(page);
            return;
        }
        let page = self.xen.map_grant(self.frontend, GrantRef(gref), writable).expect("a live grant");
        action(&page);
        if self.config.unmap_late {
            connection.late.push(page);
        }
    }
}
