//! `_procpy_cluster`: the pool-on-a-cluster's native half (issue 14). A thin synchronous Redis
//! client over the `redis` crate (one command, or a pipeline, per call; replies mapped onto
//! Python values), the payload MAC, and this run's cluster settings. The protocol itself is
//! Python (`multiprocessing/cluster.py`, `_procpy_cluster_worker.py`); the VM-free helpers are
//! in `crate::cluster`.

pub(crate) use _procpy_cluster::module_def;

#[rustpython_vm::pymodule]
mod _procpy_cluster {
    use crate::cluster;
    // `#[pyattr(once)]` expands to a path through this name.
    use redis::{ConnectionLike, ErrorKind, Value};
    use rustpython_vm::builtins::{
        PyBaseExceptionRef, PyBool, PyBytes, PyFloat, PyInt, PyStr, PyType, PyTypeRef,
    };
    use rustpython_vm::common as rustpython_common;
    use rustpython_vm::common::lock::PyMutex;
    use rustpython_vm::function::{ArgBytesLike, ArgIntoFloat, OptionalArg, PosArgs};
    use rustpython_vm::types::{Constructor, Representable};
    use rustpython_vm::{
        pyclass, AsObject, FromArgs, Py, PyObjectRef, PyPayload, PyResult, VirtualMachine,
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// How long connecting may take when no timeout is given: an unreachable host must not
    /// hang the caller forever (the read timeout stays None: XREAD BLOCK waits by design).
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A Redis error reply (WRONGTYPE, NOGROUP, BUSYGROUP, ...); `str()` is Redis's message.
    #[pyattr(name = "RedisError", once)]
    fn redis_error(vm: &VirtualMachine) -> PyTypeRef {
        vm.ctx.new_exception_type("_procpy_cluster", "RedisError", None)
    }

    /// An instance of `cls` (an exception type) with `msg` as its one argument.
    fn exception(vm: &VirtualMachine, cls: &Py<PyType>, msg: String) -> PyBaseExceptionRef {
        match cls.as_object().call((msg.clone(),), vm) {
            Ok(exc) => exc.downcast().unwrap_or_else(|_| vm.new_runtime_error(msg)),
            Err(exc) => exc,
        }
    }

    fn redis_error_from(vm: &VirtualMachine, msg: String) -> PyBaseExceptionRef {
        exception(vm, &redis_error(vm), msg)
    }

    /// Redis's own text of an error reply: `CODE detail`.
    fn server_message(e: &redis::ServerError) -> String {
        match e.details() {
            Some(d) => format!("{} {d}", e.code()),
            None => e.code().to_owned(),
        }
    }

    /// What `Redis(url, timeout=None)` takes.
    #[derive(FromArgs)]
    pub(super) struct RedisArgs {
        #[pyarg(any)]
        url: rustpython_vm::PyRef<PyStr>,
        /// The socket read timeout in seconds; None: none.
        #[pyarg(any, optional)]
        timeout: OptionalArg<Option<ArgIntoFloat>>,
    }

    /// `Redis(url, timeout=None)`: one connection to a Redis server, made now, used by one
    /// thread at a time. After an I/O failure the next call reconnects (once; callers back off).
    #[pyattr]
    #[pyclass(name = "Redis", module = "_procpy_cluster")]
    #[derive(PyPayload)]
    pub(super) struct Redis {
        client: redis::Client,
        /// The URL with its password masked, for messages and `.url`.
        shown: String,
        timeout: Option<Duration>,
        /// The live connection and the pid of the process that made it; taken out while a
        /// call uses it, so the VM can be left while blocking without holding a lock (a
        /// second thread would connect its own).
        conn: PyMutex<Option<(u32, redis::Connection)>>,
        closed: AtomicBool,
    }

    impl std::fmt::Debug for Redis {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Redis").field("url", &self.shown).finish()
        }
    }

    /// Why a round trip failed.
    enum Failure {
        /// Redis said no (an error reply outside a pipeline, an aborted transaction).
        Server(String),
        /// Not I/O, not an error reply: a bad URL, failed authentication, ...
        Other(String),
        /// The read timed out; the connection is dropped (a late reply would be misread).
        Timeout,
        /// The connection broke or could not be made; dropped.
        Io(String),
    }

    fn classify(e: redis::RedisError) -> Failure {
        if e.is_timeout() {
            return Failure::Timeout;
        }
        if e.is_io_error() || e.is_connection_dropped() || e.kind() == ErrorKind::Parse {
            return Failure::Io(e.to_string());
        }
        let text = e.to_string();
        match e.into_server_errors() {
            Some(errors) if !errors.is_empty() => {
                let msgs: Vec<String> = errors.iter().map(|(_, e)| server_message(e)).collect();
                Failure::Server(format!(
                    "EXECABORT Transaction discarded because of previous errors: {}",
                    msgs.join("; ")
                ))
            }
            _ => Failure::Other(text),
        }
    }

    impl Redis {
        fn connect(
            client: &redis::Client,
            timeout: Option<Duration>,
        ) -> Result<redis::Connection, (bool, redis::RedisError)> {
            let conn = client
                .get_connection_with_timeout(timeout.unwrap_or(CONNECT_TIMEOUT))
                .map_err(|e| (true, e))?;
            conn.set_read_timeout(timeout).map_err(|e| (false, e))?;
            conn.set_write_timeout(timeout).map_err(|e| (false, e))?;
            Ok(conn)
        }

        fn failure(&self, f: Failure, connecting: bool, vm: &VirtualMachine) -> PyBaseExceptionRef {
            let url = &self.shown;
            match f {
                Failure::Server(msg) => redis_error_from(vm, msg),
                Failure::Other(msg) => redis_error_from(vm, format!("{url}: {msg}")),
                Failure::Timeout => {
                    let secs = self.timeout.unwrap_or(CONNECT_TIMEOUT).as_secs_f64();
                    exception(
                        vm,
                        vm.ctx.exceptions.timeout_error,
                        format!("{url}: no reply within {secs} s"),
                    )
                }
                Failure::Io(msg) if connecting => exception(
                    vm,
                    vm.ctx.exceptions.connection_error,
                    format!(
                        "cannot connect to Redis at {url}: {msg} (is redis-server running? \
                         start one with `redis-server --port 6379`)"
                    ),
                ),
                Failure::Io(msg) => exception(
                    vm,
                    vm.ctx.exceptions.connection_error,
                    format!("lost the connection to Redis at {url}: {msg}"),
                ),
            }
        }

        /// Run `f` on the connection (made first if there is none) with the VM left, so other
        /// Python threads run while this one waits on the network.
        fn with_conn<T: Send>(
            &self,
            vm: &VirtualMachine,
            f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T> + Send,
        ) -> PyResult<T> {
            if self.closed.load(Ordering::Acquire) {
                return Err(
                    vm.new_value_error(format!("Redis connection to {} is closed", self.shown))
                );
            }
            // A forked child must not talk on its parent's socket: it connects its own (the
            // inherited one is only closed here, never shut down, so the parent keeps it).
            let pid = std::process::id();
            let taken = self.conn.lock().take().filter(|(owner, _)| *owner == pid).map(|(_, c)| c);
            let client = &self.client;
            let timeout = self.timeout;
            let outcome = vm.allow_threads(move || {
                let mut conn = match taken {
                    Some(c) => c,
                    None => match Self::connect(client, timeout) {
                        Ok(c) => c,
                        Err((connecting, e)) => return (None, Err((connecting, classify(e)))),
                    },
                };
                match f(&mut conn) {
                    Ok(v) => (Some(conn), Ok(v)),
                    Err(e) => match classify(e) {
                        // The stream is out of step or gone: drop it, reconnect next time.
                        f @ (Failure::Io(_) | Failure::Timeout) => (None, Err((false, f))),
                        f => (Some(conn), Err((false, f))),
                    },
                }
            });
            let (conn, result) = outcome;
            if let Some(conn) = conn {
                if !self.closed.load(Ordering::Acquire) {
                    let mut slot = self.conn.lock();
                    if slot.is_none() {
                        *slot = Some((pid, conn));
                    }
                }
            }
            result.map_err(|(connecting, f)| self.failure(f, connecting, vm))
        }
    }

    impl Constructor for Redis {
        type Args = RedisArgs;

        fn py_new(_cls: &Py<PyType>, args: Self::Args, vm: &VirtualMachine) -> PyResult<Self> {
            let Some(url) = args.url.to_str().map(str::to_owned) else {
                return Err(vm.new_value_error("a Redis URL must be valid UTF-8"));
            };
            let shown = cluster::mask_url(&url);
            if cluster::wants_tls(&url) {
                return Err(vm.new_value_error(format!(
                    "{shown}: TLS (rediss://) is not built into procpy; reach Redis over a \
                     trusted network, an SSH tunnel or stunnel, with redis://"
                )));
            }
            let timeout = match args.timeout.flatten() {
                None => None,
                Some(t) => {
                    let secs = t.into_float();
                    match Duration::try_from_secs_f64(secs) {
                        Ok(d) if secs > 0.0 => Some(d),
                        _ => {
                            return Err(vm.new_value_error(format!(
                                "timeout must be a positive number of seconds or None, not {secs}"
                            )))
                        }
                    }
                }
            };
            let client = redis::Client::open(url.as_str())
                .map_err(|e| vm.new_value_error(format!("{shown}: not a Redis URL ({e})")))?;
            let conn = vm.allow_threads(|| Self::connect(&client, timeout)).map_err(
                |(connecting, e)| {
                    let f = classify(e);
                    let this = Redis {
                        client: client.clone(),
                        shown: shown.clone(),
                        timeout,
                        conn: PyMutex::new(None),
                        closed: AtomicBool::new(false),
                    };
                    this.failure(f, connecting, vm)
                },
            )?;
            Ok(Redis {
                client,
                shown,
                timeout,
                conn: PyMutex::new(Some((std::process::id(), conn))),
                closed: AtomicBool::new(false),
            })
        }
    }

    /// One command's arguments as Redis takes them: bytes | str | int | float.
    fn command(args: &[PyObjectRef], vm: &VirtualMachine) -> PyResult<redis::Cmd> {
        let Some((name, rest)) = args.split_first() else {
            return Err(vm.new_value_error("a Redis command needs at least its name"));
        };
        let mut cmd = redis::Cmd::new();
        for arg in std::iter::once(name).chain(rest) {
            cmd.arg(arg_bytes(arg, vm)?);
        }
        Ok(cmd)
    }

    fn arg_bytes(arg: &PyObjectRef, vm: &VirtualMachine) -> PyResult<Vec<u8>> {
        if let Some(b) = arg.downcast_ref::<PyBytes>() {
            return Ok(b.as_bytes().to_vec());
        }
        if let Some(s) = arg.downcast_ref::<PyStr>() {
            return match s.to_str() {
                Some(s) => Ok(s.as_bytes().to_vec()),
                None => Err(vm.new_value_error("a Redis argument str must be valid UTF-8")),
            };
        }
        // bool is an int to Python, but True as b"1" or b"True" would be a guess.
        if arg.downcast_ref::<PyBool>().is_none() {
            if let Some(i) = arg.downcast_ref::<PyInt>() {
                return Ok(i.as_bigint().to_string().into_bytes());
            }
            if let Some(f) = arg.downcast_ref::<PyFloat>() {
                // repr() as redis-py sends it: the shortest text that reads back the same.
                return Ok(arg
                    .repr(vm)
                    .map(|r| r.as_wtf8().as_bytes().to_vec())
                    .unwrap_or_else(|_| f.to_f64().to_string().into_bytes()));
            }
        }
        Err(vm.new_type_error(format!(
            "a Redis argument must be bytes, str, int or float, not {}",
            arg.class().name()
        )))
    }

    /// A reply as a Python value (see the module's docs for the mapping). Error replies nested
    /// in a reply become RedisError instances, returned, not raised.
    fn to_py(v: Value, vm: &VirtualMachine) -> PyResult<PyObjectRef> {
        Ok(match v {
            Value::Nil => vm.ctx.none(),
            Value::Int(i) => vm.ctx.new_int(i).into(),
            Value::BulkString(b) => vm.ctx.new_bytes(b).into(),
            Value::Array(items) | Value::Set(items) => list(items, vm)?,
            Value::SimpleString(s) => vm.ctx.new_str(s).into(),
            Value::Okay => vm.ctx.new_str("OK").into(),
            Value::Map(pairs) => {
                let d = vm.ctx.new_dict();
                for (k, v) in pairs {
                    d.set_item(&*to_py(k, vm)?, to_py(v, vm)?, vm)?;
                }
                d.into()
            }
            Value::Attribute { data, .. } => to_py(*data, vm)?,
            Value::Double(f) => vm.ctx.new_float(f).into(),
            Value::Boolean(b) => vm.ctx.new_bool(b).into(),
            Value::VerbatimString { text, .. } => vm.ctx.new_str(text).into(),
            Value::BigNumber(digits) => {
                let parsed = std::str::from_utf8(&digits)
                    .ok()
                    .and_then(|s| s.parse::<malachite_bigint::BigInt>().ok());
                match parsed {
                    Some(n) => vm.ctx.new_bigint(&n).into(),
                    None => vm.ctx.new_bytes(digits).into(),
                }
            }
            Value::Push { kind, data } => {
                let mut items = vec![vm.ctx.new_str(kind.to_string()).into()];
                for d in data {
                    items.push(to_py(d, vm)?);
                }
                vm.ctx.new_list(items).into()
            }
            Value::ServerError(e) => redis_error_from(vm, server_message(&e)).into(),
            // `Value` is non-exhaustive across versions: anything new shows as its text.
            #[allow(unreachable_patterns)]
            other => vm.ctx.new_str(format!("{other:?}")).into(),
        })
    }

    fn list(items: Vec<Value>, vm: &VirtualMachine) -> PyResult<PyObjectRef> {
        let items = items.into_iter().map(|v| to_py(v, vm)).collect::<PyResult<Vec<_>>>()?;
        Ok(vm.ctx.new_list(items).into())
    }

    impl Representable for Redis {
        fn repr_str(zelf: &Py<Self>, _vm: &VirtualMachine) -> PyResult<String> {
            Ok(format!("<_procpy_cluster.Redis {}>", zelf.shown))
        }
    }

    #[derive(FromArgs)]
    struct PipelineArgs {
        #[pyarg(any)]
        cmds: PyObjectRef,
        #[pyarg(any, default = false)]
        transaction: bool,
    }

    #[pyclass(with(Constructor, Representable))]
    impl Redis {
        /// `call(*args)`: one command; an error reply raises RedisError.
        #[pymethod]
        fn call(&self, args: PosArgs<PyObjectRef>, vm: &VirtualMachine) -> PyResult {
            let cmd = command(args.as_ref(), vm)?;
            let reply = self.with_conn(vm, move |c| c.req_command(&cmd))?;
            match reply {
                Value::ServerError(e) => Err(redis_error_from(vm, server_message(&e))),
                v => to_py(v, vm),
            }
        }

        /// `pipeline(cmds, transaction=False)`: the commands in one round trip; their replies
        /// in a list, an error reply as a RedisError instance in its place. With
        /// `transaction=True` they run in MULTI/EXEC (None if a WATCH aborted it).
        #[pymethod]
        fn pipeline(&self, args: PipelineArgs, vm: &VirtualMachine) -> PyResult {
            let cmds: Vec<PyObjectRef> = args.cmds.try_to_value(vm)?;
            let mut pipe = redis::pipe();
            for c in &cmds {
                let parts: Vec<PyObjectRef> = c.try_to_value(vm)?;
                pipe.add_command(command(&parts, vm)?);
            }
            if cmds.is_empty() {
                return Ok(vm.ctx.new_list(vec![]).into());
            }
            let n = cmds.len();
            let transaction = args.transaction;
            if transaction {
                pipe.atomic();
            }
            let packed = pipe.get_packed_pipeline();
            let mut replies = self.with_conn(vm, move |c| {
                if transaction {
                    // MULTI's +OK and the n +QUEUED replies are skipped; EXEC's is the result.
                    c.req_packed_commands(&packed, n + 1, 1)
                } else {
                    c.req_packed_commands(&packed, 0, n)
                }
            })?;
            if transaction {
                return match replies.pop() {
                    Some(Value::ServerError(e)) => Err(redis_error_from(vm, server_message(&e))),
                    Some(v) => to_py(v, vm),
                    None => Err(redis_error_from(vm, "EXEC sent no reply".to_owned())),
                };
            }
            list(replies, vm)
        }

        /// Close the connection; later calls raise ValueError.
        #[pymethod]
        fn close(&self) {
            self.closed.store(true, Ordering::Release);
            self.conn.lock().take();
        }

        /// The URL, its password masked as `***`.
        #[pygetset]
        fn url(&self) -> String {
            self.shown.clone()
        }
    }

    /// `sign(key, *parts)`: HMAC-SHA256 under key over the parts, each prefixed by its length
    /// (u64, little-endian).
    #[pyfunction]
    fn sign(key: ArgBytesLike, parts: PosArgs<ArgBytesLike>, vm: &VirtualMachine) -> PyObjectRef {
        let bufs: Vec<Vec<u8>> = parts.iter().map(|p| p.borrow_buf().to_vec()).collect();
        let refs: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        let mac = cluster::sign(&key.borrow_buf(), &refs);
        vm.ctx.new_bytes(mac.to_vec()).into()
    }

    /// `verify(key, mac, *parts)`: whether mac is `sign(key, *parts)` (constant time).
    #[pyfunction]
    fn verify(key: ArgBytesLike, mac: ArgBytesLike, parts: PosArgs<ArgBytesLike>) -> bool {
        let bufs: Vec<Vec<u8>> = parts.iter().map(|p| p.borrow_buf().to_vec()).collect();
        let refs: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        cluster::verify(&key.borrow_buf(), &mac.borrow_buf(), &refs)
    }

    /// `settings()`: `{'url': str|None, 'key': bytes|None}` of this run: `--cluster` or
    /// PROCPY_CLUSTER; `--authkey-file` (PROCPY_CLUSTER_KEY_FILE) or PROCPY_CLUSTER_KEY.
    #[pyfunction]
    fn settings(vm: &VirtualMachine) -> PyResult {
        let switches = crate::switches::get();
        let url: PyObjectRef = match &switches.cluster {
            Some(u) => vm.ctx.new_str(u.as_str()).into(),
            None => vm.ctx.none(),
        };
        let key: PyObjectRef = match &switches.cluster_key_file {
            Some(file) => match cluster::key_from_file(file) {
                Ok(k) => vm.ctx.new_bytes(k).into(),
                Err(e) => {
                    return Err(vm.new_os_error(format!(
                        "cannot read the cluster key file {}: {e}",
                        file.display()
                    )))
                }
            },
            None => match std::env::var_os(cluster::KEY_ENV).filter(|k| !k.is_empty()) {
                Some(k) => {
                    use std::os::unix::ffi::OsStringExt;
                    vm.ctx.new_bytes(k.into_vec()).into()
                }
                None => vm.ctx.none(),
            },
        };
        let d = vm.ctx.new_dict();
        d.set_item("url", url, vm)?;
        d.set_item("key", key, vm)?;
        Ok(d.into())
    }

    /// `hostname()`: this machine's name.
    #[pyfunction]
    fn hostname() -> String {
        cluster::hostname()
    }
}
