//! QMP errors: a class clients branch on and a human-readable description.

use alloc::string::String;
use core::fmt;

use serde::Serialize;

/// The `class` member of an error reply (QEMU's QapiErrorClass, qapi/error.json).
///
/// QEMU reports almost everything as `GenericError`; the other classes are kept for the
/// few cases clients are known to test for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ErrorClass {
    /// this is used for errors that don't require a specific error class
    GenericError,
    /// the requested command has not been found (also: capabilities not negotiated yet)
    CommandNotFound,
    /// the requested device has not been found
    DeviceNotFound,
}

impl ErrorClass {
    /// The class as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
        }
    }
}

/// An error reply's body: `{"class": ..., "desc": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    /// A `GenericError` with this description.
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError { class: ErrorClass::GenericError, desc: desc.into() }
    }

    /// An error of a specific class.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> QmpError {
        QmpError { class, desc: desc.into() }
    }
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class.as_str(), self.desc)
    }
}
