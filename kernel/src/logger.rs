//! The `log` facade, printed on console 0 as `[LEVEL target] message`.
//! The level comes from the command line (`loglevel=`, see `Cmdline::log_level`).

use log::{LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            crate::println!("[{} {}] {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {
        crate::console::flush();
    }
}

pub fn init(level: LevelFilter) {
    // set_logger fails only if called twice; the first logger stays.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
