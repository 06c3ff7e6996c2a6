//! A Postgres cluster that the project initialises and runs under a folder of its
//! own, so `cargo run` and `cargo test` need no database set up by hand.
//!
//! Layout under the project's folder `dir`:
//! - `pgdata/`: the cluster
//! - `postgres.port`: the TCP port, picked once and reused
//! - `postgres.password`: the `postgres` superuser's password (mode 0600)
//! - `postgres.log`: the server log
//! - `.lock`: serialises concurrent [`LocalPostgres::ensure_running`] calls
//! - `.users`: every process using the cluster holds a shared lock on it, so
//!   the last one to leave knows it can stop the cluster
//!
//! Postgres refuses to run as root, so under root the cluster runs as the `postgres`
//! user (or `nobody`). When that user cannot reach `dir` (say it lives under a 0700
//! `/root`), `pgdata/` and the log live in `$TMPDIR/transplant-audit-pg-<hash of dir>`
//! instead, while the port and password files stay in `dir`.

use std::env;
use std::ffi::{CStr, OsString};
use std::fmt::{self, Write as _};
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use ring::rand::SecureRandom;
use tracing::{info, warn};

const DATA_DIR: &str = "pgdata";
const PORT_FILE: &str = "postgres.port";
const PASSWORD_FILE: &str = "postgres.password";
const LOG_FILE: &str = "postgres.log";
const LOCK_FILE: &str = ".lock";
const USERS_FILE: &str = ".users";
/// initdb reads the password from a file; this copy sits beside the cluster, where
/// the server's user can read it, only while initdb runs.
const INITDB_PASSWORD_FILE: &str = ".initdb-password";
const FALLBACK_PREFIX: &str = "transplant-audit-pg-";
const SUPERUSER: &str = "postgres";
const TIMEOUT_SECS: &str = "60";
const LOG_TAIL_LINES: usize = 20;
/// How much of the log end to read for an error message; 20 lines fit easily.
const LOG_TAIL_BYTES: u64 = 64 * 1024;
/// Past this size the log is moved aside at start, so it cannot grow without bound.
const MAX_LOG_BYTES: u64 = 16 * 1024 * 1024;
/// The only environment handed to Postgres commands: the server may run as another
/// user, who must not be able to read the parent's secrets from /proc.
const KEPT_ENV: [&str; 3] = ["PATH", "TZ", "LD_LIBRARY_PATH"];
/// Users that may run the cluster when we are root, in order of preference.
const UNPRIVILEGED_USERS: [&CStr; 2] = [c"postgres", c"nobody"];

/// Why a local Postgres cluster could not be set up, started or stopped.
///
/// Each message names what to do; OS errors are part of the message rather than a
/// `source()`, so error reporters that print the chain don't show them twice.
#[derive(Debug, thiserror::Error)]
pub enum LocalDbError {
    /// No folder with both initdb and pg_ctl was found.
    #[error(
        "no Postgres binaries found (looked at `pg_config --bindir`, /usr/lib/postgresql/*/bin, \
         /usr/pgsql-*/bin and PATH): install postgresql (e.g. `apt-get install postgresql`) \
         or set PG_BIN_DIR to the folder holding initdb and pg_ctl"
    )]
    NoBinaries,
    /// PG_BIN_DIR names a folder without initdb and pg_ctl.
    #[error(
        "PG_BIN_DIR is {dir} but that folder has no initdb and pg_ctl: point it at the folder \
         holding them (e.g. /usr/lib/postgresql/16/bin) or unset it"
    )]
    BadBinDir {
        /// The folder PG_BIN_DIR names.
        dir: PathBuf,
    },
    /// We are root and there is no unprivileged user to run Postgres as.
    #[error(
        "running as root, which Postgres refuses, and neither a `postgres` nor a `nobody` user \
         exists to run it as: create one (e.g. `useradd --system postgres`)"
    )]
    NoUnprivilegedUser,
    /// The user database could not be read.
    #[error("could not look up user `{user}`: {cause}")]
    UserLookup {
        /// The user looked up.
        user: String,
        /// What getpwnam_r reported.
        cause: io::Error,
    },
    /// The user that runs Postgres cannot reach a folder the cluster needs.
    #[error(
        "user `{user}` (who runs Postgres) cannot reach {path}: let it traverse every folder \
         above, or set TMPDIR to a folder it can reach"
    )]
    Unreachable {
        /// The user that runs Postgres.
        user: String,
        /// The folder it cannot reach.
        path: PathBuf,
    },
    /// A folder in the shared temp dir looks planted by someone else.
    #[error("{path} is not safe to hold the cluster ({reason}): remove it and try again")]
    UnsafeDir {
        /// The folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A state file holds something unusable.
    #[error("{path} is unusable ({reason}): fix or delete it and try again")]
    BadStateFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The OS gave no random bytes for the password.
    #[error("could not get random bytes from the operating system for the database password")]
    Random,
    /// No free TCP port could be had.
    #[error("could not find a free TCP port on 127.0.0.1: {0}")]
    NoFreePort(io::Error),
    /// The saved port is held by another program.
    #[error(
        "port {port} (saved in {port_file}) is in use by another program: stop that program, \
         or delete {port_file} to let a new port be picked"
    )]
    PortInUse {
        /// The saved port.
        port: u16,
        /// The file it is saved in.
        port_file: PathBuf,
    },
    /// The saved port cannot be listened on for another reason.
    #[error(
        "cannot listen on 127.0.0.1:{port} (saved in {port_file}): {cause}; delete {port_file} \
         to let a new port be picked"
    )]
    PortUnusable {
        /// The saved port.
        port: u16,
        /// The file it is saved in.
        port_file: PathBuf,
        /// What bind reported.
        cause: io::Error,
    },
    /// A file system operation failed.
    #[error("could not {action} {path}: {cause}")]
    Io {
        /// What was being done, as a verb phrase.
        action: &'static str,
        /// The file or folder it was done to.
        path: PathBuf,
        /// What the OS reported.
        cause: io::Error,
    },
    /// A command could not be run at all.
    #[error("could not run `{command}`: {cause}")]
    Spawn {
        /// The command line.
        command: String,
        /// What the OS reported.
        cause: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// Its stderr, or its stdout when stderr was empty.
        output: String,
    },
    /// The server did not come up.
    #[error(
        "Postgres did not start: `{command}` failed ({status}): {output}\n\
         last lines of {log}:\n{log_tail}"
    )]
    StartFailed {
        /// The pg_ctl command line.
        command: String,
        /// How pg_ctl exited.
        status: ExitStatus,
        /// What pg_ctl said.
        output: String,
        /// The server log.
        log: PathBuf,
        /// The last lines of the server log, where Postgres says why.
        log_tail: String,
    },
}

type Result<T, E = LocalDbError> = std::result::Result<T, E>;

/// A Postgres cluster that the project initialises and runs under a folder of its own.
pub struct LocalPostgres {
    /// Holds the port, password and lock files.
    state_dir: PathBuf,
    /// Holds `pgdata` and the log: `state_dir`, or a temp folder the run-as user can reach.
    cluster_dir: PathBuf,
    bins: Binaries,
    run_as: Option<RunAs>,
    port: u16,
    password: String,
    started_here: bool,
    /// This process's shared lock on the users file, held while it uses the cluster.
    user: File,
}

impl LocalPostgres {
    /// Initialises the cluster under `dir` if needed and starts it if it is not running.
    pub fn ensure_running(dir: &Path) -> Result<LocalPostgres, LocalDbError> {
        fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        let state_dir = fs::canonicalize(dir).map_err(io_error("resolve", dir))?;
        let _lock = DirLock::acquire(&state_dir.join(LOCK_FILE))?;
        let bins = Binaries::find()?;
        let run_as = unprivileged_user()?;
        let cluster_dir = choose_cluster_dir(&state_dir, run_as.as_ref())?;
        let password = read_or_create_password(&state_dir.join(PASSWORD_FILE))?;
        let port = read_or_pick_port(&state_dir.join(PORT_FILE))?;
        let user = open_lock_file(&state_dir.join(USERS_FILE))?;
        flock(&user, libc::LOCK_SH).map_err(io_error("lock", &state_dir.join(USERS_FILE)))?;
        let mut pg = LocalPostgres {
            user,
            state_dir,
            cluster_dir,
            bins,
            run_as,
            port,
            password,
            started_here: false,
        };
        if !pg.is_initialised()? {
            pg.initialise()?;
        }
        if pg.is_running()? {
            pg.follow_running_port()?;
        } else {
            pg.start()?;
            pg.started_here = true;
        }
        Ok(pg)
    }

    /// A connection URL for `database` on this cluster (database names are plain identifiers).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Whether this call started the server (false when it was already running).
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// The TCP port the server listens on, on 127.0.0.1 only.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.cluster_dir.join(DATA_DIR)
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.cluster_dir.join(LOG_FILE)
    }

    /// Ends this process's use of the cluster and stops it (fast mode) if
    /// no other process uses it; true when it was stopped. Whoever started
    /// it, the last user leaving stops it, so a command that started the
    /// cluster never stops it under a server that came to use it meanwhile.
    pub fn release(self) -> Result<bool, LocalDbError> {
        let _lock = DirLock::acquire(&self.state_dir.join(LOCK_FILE))?;
        let users = self.state_dir.join(USERS_FILE);
        let last = open_lock_file(&users)?;
        flock(&self.user, libc::LOCK_UN).map_err(io_error("unlock", &users))?;
        match flock(&last, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => {
                self.stop_locked()?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(io_error("lock", &users)(e)),
        }
    }

    /// Stops the server (fast mode), whoever else uses it.
    pub fn stop(&self) -> Result<(), LocalDbError> {
        // Without the lock a concurrent ensure_running could see the server up and
        // hand out a URL just before it goes down.
        let _lock = DirLock::acquire(&self.state_dir.join(LOCK_FILE))?;
        self.stop_locked()
    }

    /// [`Self::stop`], under the lock the caller holds.
    fn stop_locked(&self) -> Result<(), LocalDbError> {
        if !self.is_running()? {
            return Ok(());
        }
        let mut cmd = self.pg_ctl("stop");
        cmd.args(["-w", "-t", TIMEOUT_SECS, "-m", "fast"]);
        self.run(&mut cmd)?;
        info!(data_dir = %self.data_dir().display(), "stopped the local Postgres");
        Ok(())
    }

    fn is_initialised(&self) -> Result<bool> {
        let marker = self.data_dir().join("PG_VERSION");
        marker.try_exists().map_err(io_error("inspect", &marker))
    }

    fn initialise(&self) -> Result<()> {
        info!(data_dir = %self.data_dir().display(), "initialising a local Postgres cluster");
        self.create_data_dir()?;
        let pwfile = TransientFile::create(
            &self.cluster_dir.join(INITDB_PASSWORD_FILE),
            &self.password,
            self.run_as.as_ref(),
        )?;
        let mut pwfile_arg = OsString::from("--pwfile=");
        pwfile_arg.push(&pwfile.path);
        let mut cmd = self.command(&self.bins.initdb);
        cmd.args([
            "--auth=scram-sha-256",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
        ])
        .arg(pwfile_arg)
        .arg("-D")
        .arg(self.data_dir());
        self.run(&mut cmd)?;
        Ok(())
    }

    fn create_data_dir(&self) -> Result<()> {
        let data = self.data_dir();
        match DirBuilder::new().mode(0o700).create(&data) {
            Ok(()) => {}
            // An empty folder left by a failed initdb is fine; initdb refuses a non-empty one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error("create", &data)(e)),
        }
        chown_to(&data, self.run_as.as_ref())
    }

    fn is_running(&self) -> Result<bool> {
        let mut cmd = self.pg_ctl("status");
        let out = self.output(&mut cmd)?;
        // pg_ctl documents 0 as running and 3 as not running; 4 (no data dir) and the
        // rest are real failures.
        match out.status.code() {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => Err(self.failure(&cmd, &out)),
        }
    }

    /// A server started on another port (say the port file was deleted while it ran)
    /// is still ours: follow it rather than hand out a URL nobody listens on.
    fn follow_running_port(&mut self) -> Result<()> {
        let Some(port) = self.running_port() else {
            return Ok(());
        };
        if port != self.port {
            warn!(
                saved = self.port,
                running = port,
                "the local Postgres runs on another port than saved; using the running one"
            );
            write_atomically(&self.state_dir.join(PORT_FILE), &format!("{port}\n"), 0o644)?;
            self.port = port;
        }
        Ok(())
    }

    /// The port from postmaster.pid, whose fourth line it is.
    fn running_port(&self) -> Option<u16> {
        let pid_file = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    fn start(&self) -> Result<()> {
        check_port_free(self.port, &self.state_dir.join(PORT_FILE))?;
        let log = self.log_path();
        self.prepare_log(&log)?;
        let mut cmd = self.pg_ctl("start");
        cmd.args(["-w", "-t", TIMEOUT_SECS, "-l"])
            .arg(&log)
            .arg("-o")
            .arg(self.server_options());
        let out = self.output(&mut cmd)?;
        if !out.status.success() {
            return Err(LocalDbError::StartFailed {
                command: self.describe(&cmd),
                status: out.status,
                output: output_text(&out),
                log_tail: log_tail(&log),
                log,
            });
        }
        info!(
            port = self.port,
            data_dir = %self.data_dir().display(),
            log = %log.display(),
            "started the local Postgres"
        );
        Ok(())
    }

    /// Passed on every start rather than written to postgresql.conf, so the port file
    /// stays the one place the port is kept.
    fn server_options(&self) -> String {
        // pg_ctl hands this to a shell, so '' reaches Postgres as an empty value: no
        // unix socket, hence no clash with a system cluster's socket folder.
        format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='' \
             -c max_connections=200",
            self.port
        )
    }

    /// The server writes the log as the run-as user, who may not create files here.
    fn prepare_log(&self, log: &Path) -> Result<()> {
        rotate_if_large(log)?;
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)
            .map_err(io_error("create", log))?;
        chown_to(log, self.run_as.as_ref())
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = self.command(&self.bins.pg_ctl);
        cmd.arg(action).arg("-D").arg(self.data_dir());
        cmd
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        // HOME and the working folder must be somewhere the run-as user may enter,
        // which /root is not.
        cmd.env_clear()
            .env("HOME", &self.cluster_dir)
            .env("LC_ALL", "C")
            .current_dir(&self.cluster_dir)
            .stdin(Stdio::null());
        for key in KEPT_ENV {
            if let Some(value) = env::var_os(key) {
                cmd.env(key, value);
            }
        }
        if let Some(user) = &self.run_as {
            // std also drops root's supplementary groups when it switches uid.
            cmd.uid(user.uid)
                .gid(user.gid)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
        }
        cmd
    }

    fn run(&self, cmd: &mut Command) -> Result<Output> {
        let out = self.output(cmd)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failure(cmd, &out))
        }
    }

    fn output(&self, cmd: &mut Command) -> Result<Output> {
        cmd.output().map_err(|cause| LocalDbError::Spawn {
            command: self.describe(cmd),
            cause,
        })
    }

    fn failure(&self, cmd: &Command, out: &Output) -> LocalDbError {
        LocalDbError::CommandFailed {
            command: self.describe(cmd),
            status: out.status,
            output: output_text(out),
        }
    }

    /// The command line for error messages; it never holds the password, which only
    /// ever travels in a file.
    fn describe(&self, cmd: &Command) -> String {
        let mut text = shell_quote(&cmd.get_program().to_string_lossy());
        for arg in cmd.get_args() {
            text.push(' ');
            text.push_str(&shell_quote(&arg.to_string_lossy()));
        }
        if let Some(user) = &self.run_as {
            // Writing to a String cannot fail.
            let _ = write!(text, " (as user {})", user.name);
        }
        text
    }
}

impl fmt::Debug for LocalPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalPostgres")
            .field("data_dir", &self.data_dir())
            .field("port", &self.port)
            .field("password", &"<redacted>")
            .field("run_as", &self.run_as.as_ref().map(|user| &user.name))
            .field("started_here", &self.started_here)
            .finish_non_exhaustive()
    }
}

/// The initdb and pg_ctl to use.
struct Binaries {
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

impl Binaries {
    fn find() -> Result<Self> {
        if let Some(dir) = env::var_os("PG_BIN_DIR").filter(|dir| !dir.is_empty()) {
            let dir = PathBuf::from(dir);
            return Self::in_dir(&dir).ok_or(LocalDbError::BadBinDir { dir });
        }
        candidate_bin_dirs()
            .iter()
            .find_map(|dir| Self::in_dir(dir))
            .ok_or(LocalDbError::NoBinaries)
    }

    fn in_dir(dir: &Path) -> Option<Self> {
        let initdb = dir.join("initdb");
        let pg_ctl = dir.join("pg_ctl");
        (is_executable(&initdb) && is_executable(&pg_ctl)).then_some(Binaries { initdb, pg_ctl })
    }
}

/// Where Postgres binaries usually are, most preferred first.
fn candidate_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = pg_config_bindir().into_iter().collect();
    dirs.extend(versioned_dirs(Path::new("/usr/lib/postgresql"), ""));
    dirs.extend(versioned_dirs(Path::new("/usr"), "pgsql-"));
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    dirs
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The `bin` folders of `<parent>/<prefix><version>`, highest version first.
fn versioned_dirs(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name();
            let version = parse_version(name.to_str()?.strip_prefix(prefix)?)?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// "9.6" and "16" as comparable numbers, so 16 sorts above 9.6.
fn parse_version(text: &str) -> Option<Vec<u32>> {
    text.split('.').map(|part| part.parse().ok()).collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
}

/// The unprivileged user that runs Postgres for us.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// Postgres refuses to run as root, so root runs it as someone else; others run it as themselves.
fn unprivileged_user() -> Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    for name in UNPRIVILEGED_USERS {
        if let Some(user) = lookup_user(name)? {
            return Ok(Some(user));
        }
    }
    Err(LocalDbError::NoUnprivilegedUser)
}

fn lookup_user(name: &CStr) -> Result<Option<RunAs>> {
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: passwd is plain data, for which all zeroes is a valid value.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and buf's length is passed along;
        // the reentrant variant keeps this safe next to other threads.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &raw mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &raw mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(LocalDbError::UserLookup {
                user: name.to_string_lossy().into_owned(),
                cause: io::Error::from_raw_os_error(rc),
            });
        }
        return Ok((!found.is_null()).then(|| RunAs {
            name: name.to_string_lossy().into_owned(),
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        }));
    }
}

/// The cluster stays under the project folder unless the run-as user cannot reach it.
fn choose_cluster_dir(state_dir: &Path, run_as: Option<&RunAs>) -> Result<PathBuf> {
    let Some(user) = run_as else {
        return Ok(state_dir.to_path_buf());
    };
    if can_traverse(state_dir, user)? {
        return Ok(state_dir.to_path_buf());
    }
    let temp = env::temp_dir();
    let temp = fs::canonicalize(&temp).map_err(io_error("resolve", &temp))?;
    if !can_traverse(&temp, user)? {
        return Err(LocalDbError::Unreachable {
            user: user.name.clone(),
            path: temp,
        });
    }
    let fallback = temp.join(fallback_name(state_dir));
    prepare_private_dir(&fallback, user)?;
    info!(
        cluster_dir = %fallback.display(),
        project_dir = %state_dir.display(),
        user = %user.name,
        "the Postgres user cannot reach the project folder, so the local cluster lives in the temp folder"
    );
    Ok(fallback)
}

/// Named from the project folder, so each project keeps its own cluster across runs.
fn fallback_name(state_dir: &Path) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, state_dir.as_os_str().as_bytes());
    format!("{FALLBACK_PREFIX}{}", hex::encode(&digest.as_ref()[..8]))
}

/// Whether `user` may enter `path` and every folder above it. Only the primary group
/// counts, because std drops supplementary groups when it switches to that user.
fn can_traverse(path: &Path, user: &RunAs) -> Result<bool> {
    for folder in path.ancestors() {
        let meta = fs::metadata(folder).map_err(io_error("inspect", folder))?;
        let search_bit = if meta.uid() == user.uid {
            0o100
        } else if meta.gid() == user.gid {
            0o010
        } else {
            0o001
        };
        if meta.mode() & search_bit == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The folder sits in a world-writable temp dir, so whatever is already there may have
/// been planted: take it only if it is a real folder that no one else can write.
fn prepare_private_dir(path: &Path, user: &RunAs) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) => check_private_dir(path, &meta, user)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(io_error("create", path))?,
        Err(e) => return Err(io_error("inspect", path)(e)),
    }
    chown_to(path, Some(user))?;
    fs::set_permissions(path, Permissions::from_mode(0o700))
        .map_err(io_error("set permissions on", path))
}

fn check_private_dir(path: &Path, meta: &Metadata, user: &RunAs) -> Result<()> {
    let reason = if !meta.file_type().is_dir() {
        "not a plain folder"
    } else if meta.uid() != 0 && meta.uid() != user.uid {
        "owned by another user"
    } else if meta.mode() & 0o022 != 0 {
        "writable by other users"
    } else {
        return Ok(());
    };
    Err(LocalDbError::UnsafeDir {
        path: path.to_path_buf(),
        reason,
    })
}

fn chown_to(path: &Path, user: Option<&RunAs>) -> Result<()> {
    let Some(user) = user else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(io_error("change the owner of", path))
}

fn read_or_create_password(path: &Path) -> Result<String> {
    let Some(text) = read_optional(path)? else {
        let password = random_password()?;
        write_atomically(path, &format!("{password}\n"), 0o600)?;
        return Ok(password);
    };
    keep_private(path)?;
    let password = text.trim();
    // The password goes into URLs unescaped, so it must need no escaping.
    let url_safe = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if password.is_empty() || !password.bytes().all(url_safe) {
        return Err(LocalDbError::BadStateFile {
            path: path.to_path_buf(),
            reason: "expected a password of letters, digits, '-', '.', '_' or '~'".to_owned(),
        });
    }
    Ok(password.to_owned())
}

fn random_password() -> Result<String> {
    let mut bytes = [0_u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| LocalDbError::Random)?;
    Ok(hex::encode(bytes))
}

/// A password file someone loosened (say by copying it around) is tightened again.
fn keep_private(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(io_error("inspect", path))?;
    if meta.mode() & 0o077 == 0 {
        return Ok(());
    }
    warn!(path = %path.display(), "the password file was readable by others; setting it to 0600");
    fs::set_permissions(path, Permissions::from_mode(0o600))
        .map_err(io_error("set permissions on", path))
}

fn read_or_pick_port(path: &Path) -> Result<u16> {
    let Some(text) = read_optional(path)? else {
        let port = pick_free_port()?;
        write_atomically(path, &format!("{port}\n"), 0o644)?;
        return Ok(port);
    };
    match text.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(LocalDbError::BadStateFile {
            path: path.to_path_buf(),
            reason: format!("expected a TCP port number, found {:?}", text.trim()),
        }),
    }
}

/// The kernel hands out a port nobody holds; it may be taken again before Postgres
/// binds it, which start then reports clearly.
fn pick_free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(LocalDbError::NoFreePort)?;
    let addr = listener.local_addr().map_err(LocalDbError::NoFreePort)?;
    Ok(addr.port())
}

/// Checked before starting because Postgres would only say so deep in its log.
fn check_port_free(port: u16, port_file: &Path) -> Result<()> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(LocalDbError::PortInUse {
            port,
            port_file: port_file.to_path_buf(),
        }),
        Err(cause) => Err(LocalDbError::PortUnusable {
            port,
            port_file: port_file.to_path_buf(),
            cause,
        }),
    }
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

/// Writes through a temporary file and a rename, so a crash never leaves a
/// half-written port or password behind.
fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    remove_if_exists(&tmp)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error("create", &tmp))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("replace", path))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("remove", path)(e)),
        _ => Ok(()),
    }
}

fn rotate_if_large(log: &Path) -> Result<()> {
    match fs::metadata(log) {
        Ok(meta) if meta.len() > MAX_LOG_BYTES => {
            let old = log.with_extension("log.old");
            fs::rename(log, &old).map_err(io_error("rotate", log))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("inspect", log)(e)),
    }
}

/// The last lines of the server log, where Postgres explains why it would not start.
fn log_tail(log: &Path) -> String {
    match read_end(log, LOG_TAIL_BYTES) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(could not read the log: {e})"),
    }
}

fn read_end(path: &Path, bytes: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Quotes an argument as a shell needs it, so a command from an error can be pasted and rerun.
fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-=:,@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_owned()
    } else if !arg.contains(['"', '$', '`', '\\', '!']) {
        format!("\"{arg}\"")
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// What a failed command said: stderr, or stdout for commands that report there.
fn output_text(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout)
    } else {
        stderr
    };
    text.trim().to_owned()
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LocalDbError + use<> {
    let path = path.to_path_buf();
    move |cause| LocalDbError::Io {
        action,
        path,
        cause,
    }
}

/// A file that exists only while a command needs it.
struct TransientFile {
    path: PathBuf,
}

impl TransientFile {
    fn create(path: &Path, contents: &str, owner: Option<&RunAs>) -> Result<Self> {
        // A copy left by a crash would make create_new fail.
        remove_if_exists(path)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error("create", path))?;
        // Made before writing, so a failed write still removes the file.
        let transient = TransientFile {
            path: path.to_path_buf(),
        };
        file.write_all(contents.as_bytes())
            .map_err(io_error("write", path))?;
        chown_to(path, owner)?;
        Ok(transient)
    }
}

impl Drop for TransientFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), error = %e, "could not remove a transient password file");
        }
    }
}

/// Opens (creating it if need be) a file that only carries flocks; its
/// locks go with the descriptor.
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_error("open", path))
}

/// An exclusive flock on the lock file, released when dropped (the descriptor closes).
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(path: &Path) -> Result<Self> {
        let file = open_lock_file(path)?;
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                info!(lock = %path.display(), "waiting for another process to finish setting up the local Postgres");
                flock(&file, libc::LOCK_EX).map_err(io_error("lock", path))?;
            }
            Err(e) => return Err(io_error("lock", path)(e)),
        }
        Ok(DirLock { _file: file })
    }
}

fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: the descriptor belongs to `file`, which outlives the call.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::thread;
    use std::time::{Duration, Instant};

    /// What a server answers to a startup packet when it wants SCRAM, not trust.
    const AUTH_SASL: i32 = 10;

    /// Stops the cluster even when an assertion fails, so no test leaves a server behind.
    struct StopOnDrop(LocalPostgres);

    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            if let Err(e) = self.0.stop() {
                eprintln!("could not stop the test cluster: {e}");
            }
        }
    }

    /// A fresh parent folder with the given mode, and a project folder to be made in it.
    fn project_dir(parent_mode: u32) -> (tempfile::TempDir, PathBuf) {
        let parent = tempfile::Builder::new()
            .prefix("localdb-test-")
            .tempdir_in("/tmp")
            .unwrap();
        fs::set_permissions(parent.path(), Permissions::from_mode(parent_mode)).unwrap();
        let dir = parent.path().join("project");
        (parent, dir)
    }

    /// Sends a protocol 3.0 startup packet and returns the authentication request code.
    fn auth_request(port: u16) -> i32 {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let params = b"user\0postgres\0database\0postgres\0\0";
        let len = i32::try_from(8 + params.len()).unwrap();
        let mut packet = Vec::new();
        packet.extend(len.to_be_bytes());
        packet.extend(196_608_i32.to_be_bytes());
        packet.extend(params);
        stream.write_all(&packet).unwrap();
        let mut head = [0_u8; 9];
        stream.read_exact(&mut head).unwrap();
        assert_eq!(head[0], b'R', "expected an authentication request");
        i32::from_be_bytes(head[5..9].try_into().unwrap())
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn starts_once_serves_scram_and_stops() {
        let (_parent, dir) = project_dir(0o755);
        let clock = Instant::now();
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let dir = dir.clone();
                thread::spawn(move || LocalPostgres::ensure_running(&dir))
            })
            .collect();
        let mut clusters: Vec<LocalPostgres> = racers
            .into_iter()
            .map(|racer| racer.join().unwrap().unwrap())
            .collect();
        eprintln!("first init + start took {:?}", clock.elapsed());
        assert_eq!(clusters.iter().filter(|pg| pg.started_here()).count(), 1);
        assert_eq!(clusters[0].url("audit"), clusters[1].url("audit"));
        let pg = StopOnDrop(clusters.remove(0));
        let pg = &pg.0;

        let dir = fs::canonicalize(&dir).unwrap();
        assert_eq!(pg.data_dir(), dir.join(DATA_DIR));
        assert!(pg.is_running().unwrap());
        assert_eq!(auth_request(pg.port()), AUTH_SASL);
        let url = pg.url("audit");
        assert!(url.starts_with("postgres://postgres:"));
        assert!(url.ends_with(&format!("@127.0.0.1:{}/audit", pg.port())));
        assert!(!format!("{pg:?}").contains(&pg.password));
        let password_file = fs::metadata(dir.join(PASSWORD_FILE)).unwrap();
        assert_eq!(password_file.mode() & 0o777, 0o600);
        assert!(!dir.join(INITDB_PASSWORD_FILE).exists());

        let again = LocalPostgres::ensure_running(&dir).unwrap();
        assert!(!again.started_here());
        assert_eq!(again.url("audit"), url);

        pg.stop().unwrap();
        assert!(!pg.is_running().unwrap());
        pg.stop().unwrap();

        let clock = Instant::now();
        let restarted = StopOnDrop(LocalPostgres::ensure_running(&dir).unwrap());
        eprintln!("restart took {:?}", clock.elapsed());
        assert!(restarted.0.started_here());
        assert_eq!(restarted.0.url("audit"), url);
    }

    #[test]
    fn the_last_process_using_the_cluster_stops_it() {
        let (_parent, dir) = project_dir(0o755);
        let starter = LocalPostgres::ensure_running(&dir).unwrap();
        let joiner = LocalPostgres::ensure_running(&dir).unwrap();
        let port = starter.port();
        let (started, joined) = (starter.started_here(), joiner.started_here());
        let starter_stopped = starter.release().unwrap();
        let running_for_the_joiner = joiner.is_running().unwrap();
        let joiner_stopped = joiner.release().unwrap();
        let closed = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err();
        if !closed {
            LocalPostgres::ensure_running(&dir).unwrap().stop().unwrap();
        }
        assert!(started && !joined);
        assert!(!starter_stopped, "the joiner still uses it");
        assert!(running_for_the_joiner);
        assert!(joiner_stopped && closed, "the last user stopped it");
    }

    #[test]
    fn falls_back_to_temp_dir_when_the_project_is_unreachable() {
        let (_parent, dir) = project_dir(0o700);
        let pg = StopOnDrop(LocalPostgres::ensure_running(&dir).unwrap());
        let dir = fs::canonicalize(&dir).unwrap();
        assert!(dir.join(PORT_FILE).exists());
        assert!(dir.join(PASSWORD_FILE).exists());
        assert_eq!(auth_request(pg.0.port()), AUTH_SASL);
        let cluster_dir = pg.0.cluster_dir.clone();
        if is_root() {
            assert_eq!(
                cluster_dir.parent(),
                Some(fs::canonicalize(env::temp_dir()).unwrap().as_path())
            );
            assert_eq!(
                cluster_dir.file_name().unwrap().to_str(),
                Some(fallback_name(&dir).as_str())
            );
        } else {
            assert_eq!(cluster_dir, dir);
        }
        drop(pg);
        if cluster_dir != dir {
            fs::remove_dir_all(&cluster_dir).unwrap();
        }
    }

    #[test]
    fn logged_commands_can_be_pasted_into_a_shell() {
        assert_eq!(shell_quote("/usr/bin/pg_ctl"), "/usr/bin/pg_ctl");
        assert_eq!(shell_quote("-c a='' -c b"), "\"-c a='' -c b\"");
        assert_eq!(shell_quote("it's $HOME"), r"'it'\''s $HOME'");
        assert_eq!(shell_quote(""), "\"\"");
    }

    #[test]
    fn versions_sort_numerically() {
        assert!(parse_version("16") > parse_version("9.6"));
        assert_eq!(parse_version("beta"), None);
    }
}
