//! `fdatasync` for the write-ahead log on a thread that never needs the GIL.
//!
//! The log answers a client only once its record is synced. On a Python worker thread each
//! sync needed the GIL twice (to start, and to hand its result back), and while the event
//! loop was busy each of those waited up to the interpreter's switch interval: at half the
//! maximum load that was most of the p99 ack latency, for a sync that takes half a
//! millisecond. Here a native thread takes (ticket, fd, close) requests in order, syncs, and
//! reports through a pipe the event loop watches; the loop collects the finished tickets.
//!
//! It also deletes the segments a checkpoint made obsolete: unlinking a 64 MiB file frees
//! its blocks inside the call, which held the event loop for tens of milliseconds.
//!
//! Requests run in the order given, so closing a full segment after its last sync, and
//! syncing the next segment, keep their order (a sync of the new segment returning means the
//! old one is synced too). Shared state: the finished list, behind a mutex; the sender is
//! used by the event loop only.

use std::fs::File;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

type Finished = Arc<Mutex<Vec<(u64, i32)>>>;

enum Job {
    Sync { fd: RawFd, close: bool },
    Remove(PathBuf),
}

#[pyclass(module = "processors._wire")]
pub struct Syncer {
    requests: Option<Sender<(u64, Job)>>,
    finished: Finished,
    thread: Option<JoinHandle<()>>,
    next: u64,
}

/// fdatasync(fd), then close it if asked; the errno of a failure, else 0.
fn sync(fd: RawFd, close: bool) -> i32 {
    // SAFETY: the log owns `fd` and keeps it open until a request with `close` is done here.
    let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let result = file.sync_data();
    if close {
        drop(ManuallyDrop::into_inner(file));
    }
    result.err().map_or(0, |e| e.raw_os_error().unwrap_or(-1))
}

impl Syncer {
    fn send(&mut self, job: Job) -> PyResult<u64> {
        // OSError, as a failed sync is: the log's callers answer 503 and nothing is acknowledged
        let Some(requests) = &self.requests else { return Err(PyOSError::new_err("the write-ahead log's syncer is stopped")) };
        self.next += 1;
        requests.send((self.next, job)).map_err(|_| PyOSError::new_err("the write-ahead log's sync thread is gone"))?;
        Ok(self.next)
    }
}

#[pymethods]
impl Syncer {
    /// `notify`: the write end of a pipe; one byte is written to it after each request.
    #[new]
    fn new(notify: RawFd) -> PyResult<Self> {
        if notify < 0 {
            return Err(PyValueError::new_err("notify must be an open descriptor"));
        }
        let (requests, inbox) = channel::<(u64, Job)>();
        let finished: Finished = Arc::default();
        let done = Arc::clone(&finished);
        let thread = std::thread::Builder::new().name("wal-sync".into()).spawn(move || {
            // SAFETY: the log keeps the pipe open until `stop` has joined this thread.
            let mut pipe = ManuallyDrop::new(unsafe { File::from_raw_fd(notify) });
            for (ticket, job) in inbox {
                let errno = match job {
                    Job::Sync { fd, close } => sync(fd, close),
                    Job::Remove(path) => std::fs::remove_file(path).err().map_or(0, |e| e.raw_os_error().unwrap_or(-1)),
                };
                done.lock().unwrap_or_else(|e| e.into_inner()).push((ticket, errno));
                let _ = pipe.write(&[1]); // a full pipe already holds a wake-up
            }
        }).map_err(|e| PyValueError::new_err(format!("cannot start the sync thread: {e}")))?;
        Ok(Syncer { requests: Some(requests), finished, thread: Some(thread), next: 0 })
    }

    /// Sync `fd` (and close it after, if `close`), after every earlier request; returns
    /// the request's ticket.
    #[pyo3(signature = (fd, close = false))]
    fn request(&mut self, fd: RawFd, close: bool) -> PyResult<u64> {
        self.send(Job::Sync { fd, close })
    }

    /// Delete the file at `path`, after every earlier request; returns the ticket.
    fn remove(&mut self, path: PathBuf) -> PyResult<u64> {
        self.send(Job::Remove(path))
    }

    /// The requests finished since the last call: (ticket, errno), errno 0 for success.
    fn take_finished(&self) -> Vec<(u64, i32)> {
        std::mem::take(&mut *self.finished.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Finish every request given, then end the thread. Safe twice.
    fn stop(&mut self, py: Python<'_>) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            py.detach(|| {
                let _ = thread.join();
            });
        }
    }
}
