//! Results that arrive later: a submitted call and the iterator of `imap`.

use super::error::{Error, Result};
use super::value::from_value;
use procpy_interpreter::wire::Value;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A one-shot slot a pool thread fills and a [`Task`] waits on (blocking or as a future).
#[derive(Default)]
pub(super) struct Slot {
    state: Mutex<(Option<Result<Value>>, Option<Waker>)>,
    cv: Condvar,
}

impl Slot {
    pub(super) fn fill(&self, r: Result<Value>) {
        let waker = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.0 = Some(r);
            st.1.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
    pub(super) fn wait(&self, timeout: Option<Duration>) -> Option<Result<Value>> {
        let deadline = timeout.map(|d| Instant::now() + d);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = st.0.take() {
                return Some(r);
            }
            st = match deadline {
                None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.cv.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }
}

/// A submitted call: wait for it blocking ([`Task::wait`], [`Task::wait_timeout`]) or `.await`
/// it (any async runtime: it is woken by the pool thread that finishes it).
///
/// ```
/// # procpy::init();
/// let engine = procpy::Builder::new().workers(1).build().unwrap();
/// let mut t = engine.submit::<_, String>("builtins:str", &12);
/// let s = loop {
///     if let Some(r) = t.wait_timeout(std::time::Duration::from_millis(50)) { break r.unwrap() }
/// };
/// assert_eq!(s, "12");
/// ```
#[must_use = "a task does nothing useful unless its result is waited for or awaited"]
pub struct Task<R> {
    pub(super) slot: Arc<Slot>,
    pub(super) _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Task<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("result", &std::any::type_name::<R>())
            .field(
                "finished",
                &self.slot.state.lock().unwrap_or_else(|e| e.into_inner()).0.is_some(),
            )
            .finish()
    }
}

impl<R: DeserializeOwned> Task<R> {
    /// Block until the call finishes.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// assert_eq!(engine.submit::<_, i64>("builtins:max", &(3, 9)).wait().unwrap(), 9);
    /// ```
    pub fn wait(self) -> Result<R> {
        let v = self.slot.wait(None).unwrap_or(Err(Error::Closed))?;
        Ok(from_value(&v)?)
    }

    /// Wait at most `d`: `None` if the call is still running (wait again later).
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// let mut t = engine.submit::<_, ()>("time:sleep", &0.5);
    /// assert!(t.wait_timeout(std::time::Duration::from_millis(1)).is_none());
    /// ```
    pub fn wait_timeout(&mut self, d: Duration) -> Option<Result<R>> {
        let r = self.slot.wait(Some(d))?;
        Some(r.and_then(|v| Ok(from_value(&v)?)))
    }

    /// Whether the result is ready.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// let t = engine.submit::<_, ()>("time:sleep", &0.5);
    /// assert!(!t.is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        self.slot.state.lock().unwrap_or_else(|e| e.into_inner()).0.is_some()
    }
}

impl<R: DeserializeOwned> Future for Task<R> {
    type Output = Result<R>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let mut st = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.0.take() {
            Some(r) => Poll::Ready(r.and_then(|v| Ok(from_value(&v)?))),
            None => {
                st.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The iterator of [`crate::Engine::imap`].
pub struct Imap<R> {
    /// (slot of the chunk, index of its first item, its length)
    pub(super) chunks: VecDeque<(Arc<Slot>, usize, usize)>,
    pub(super) current: VecDeque<Value>,
    pub(super) index: usize,
    pub(super) _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Imap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("item", &std::any::type_name::<R>())
            .field("next_index", &self.index)
            .field("buffered", &self.current.len())
            .field("chunks_left", &self.chunks.len())
            .finish()
    }
}

impl<R: DeserializeOwned> Iterator for Imap<R> {
    type Item = Result<R>;
    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(v) = self.current.pop_front() {
                let i = self.index;
                self.index += 1;
                return Some(from_value(&v).map_err(|e| {
                    let e = Error::from(e);
                    match e {
                        Error::Codec { path, message } => {
                            Error::Codec { path: format!("[{i}]{path}"), message }
                        }
                        e => e,
                    }
                }));
            }
            let (slot, start, _len) = self.chunks.pop_front()?;
            self.index = start;
            match slot.wait(None).unwrap_or(Err(Error::Closed)) {
                Ok(Value::List(items)) => self.current = items.into(),
                Ok(other) => {
                    return Some(Err(Error::Codec {
                        path: String::new(),
                        message: format!(
                            "expected the chunk's list, found {}",
                            super::value::describe(&other)
                        ),
                    }))
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
