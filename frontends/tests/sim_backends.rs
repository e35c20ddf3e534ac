//! The simulated backends as another crate uses them (feature `sim`): a Disk over
//! `blkfront::sim::Backend` serving a `Vec<u8>`, and a Netfront over
//! `netfront::sim::netback`, each in a world set up by `World::toolstack`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use frontends::blkfront::sim::{Backend, Config, Fault};
use frontends::blkfront::{Disk, Error, Options};
use frontends::netfront::Netfront;
use frontends::netfront::sim::{ToGuest, Wire, netback, quiet_peer};
use xen_seams::sim::{Executor, PvDevice, World};

const VBD: PvDevice = PvDevice { kind: "vbd", devid: 5632, frontend: 7, backend: 0 };
const VIF: PvDevice = PvDevice { kind: "vif", devid: 0, frontend: 7, backend: 0 };

#[test]
fn a_disk_reads_and_writes_the_bytes_the_backend_serves() {
    let world = World::new();
    world.toolstack(VBD, &[]);
    let bytes: Vec<u8> = (0..1 << 20).map(|i: usize| (i / 512) as u8 ^ i as u8).collect();
    let backend = Backend::new(world.domain(0), VBD, Config::default(), bytes.clone());
    let log = backend.log();
    let front = world.domain(7);
    let mut executor = Executor::new(&world);
    executor.spawn_background("blkback", backend.run());
    let outcome = executor.spawn("disk", async {
        let disk = Disk::connect(&front, 5632, Options::default()).await.unwrap();
        let mut sector_9 = vec![0u8; 512];
        disk.read(9, &mut sector_9).await.unwrap();
        disk.write(100, &[0xee; 4096]).await.unwrap();
        let capacity = disk.info().sectors;
        disk.close().await.unwrap();
        (sector_9, capacity)
    });
    executor.run().unwrap();
    drop(executor);
    let (sector_9, capacity) = outcome.take().unwrap();
    assert_eq!((sector_9.as_slice(), capacity), (&bytes[9 * 512..10 * 512], 2048));
    let log = log.borrow();
    assert!(log.disk[100 * 512..108 * 512].iter().all(|&b| b == 0xee));
    assert!(log.finished, "the backend saw the close and unmapped everything");
    assert_eq!(world.grants(7), []);
}

#[test]
fn an_injected_io_error_reaches_the_caller() {
    let world = World::new();
    world.toolstack(VBD, &[]);
    let config = Config { fault: Fault::IoError(0), ..Config::default() };
    let backend = Backend::new(world.domain(0), VBD, config, vec![0; 64 * 512]);
    let front = world.domain(7);
    let mut executor = Executor::new(&world);
    executor.spawn_background("blkback", backend.run());
    let outcome = executor.spawn("disk", async {
        let disk = Disk::connect(&front, 5632, Options::default()).await.unwrap();
        let result = disk.read(8, &mut [0u8; 512]).await;
        disk.close().await.unwrap();
        result
    });
    executor.run().unwrap();
    let io_error = Error::Io { operation: frontends::blkif::Operation::Read, sector: 8 };
    assert_eq!(outcome.take(), Some(Err(io_error)));
}

#[test]
fn a_netfront_exchanges_frames_with_the_backends_wire() {
    let world = World::new();
    world.toolstack(VIF, &[("mac", "00:16:3e:00:00:07")]);
    let wire = Rc::new(RefCell::new(Wire::default()));
    wire.borrow_mut().to_guest.push_back(ToGuest::Frame(vec![0x42; 60]));
    let front = world.domain(7);
    let mut executor = Executor::new(&world);
    executor.spawn_background("netback", netback(world.domain(0), VIF, wire.clone(), quiet_peer));
    let received = executor.spawn("netfront", async {
        let mut net = Netfront::connect(&front, 0).await.unwrap();
        net.send(&[0x24; 100]).unwrap();
        let received = loop {
            if let Some(frame) = net.receive().unwrap() {
                break frame;
            }
            assert!(net.wait(Duration::from_secs(5)).await.unwrap().receive, "no frame came");
        };
        net.close().await.unwrap();
        received
    });
    executor.run().unwrap();
    assert_eq!(received.take(), Some(vec![0x42; 60]));
    assert_eq!(wire.borrow().from_guest, [vec![0x24; 100]]);
}
