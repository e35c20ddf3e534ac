//! An in-memory xenstored for host tests: nodes, permissions, transactions, watches and
//! injected faults, behind the same bytes the real one speaks.
//!
//! Requests go in as encoded bytes ([`Sim::send`]) and replies and watch events come
//! out as encoded bytes ([`Sim::receive`]), so a test through the sim also tests the
//! encoders and the decoder. The semantics are xenstored's where a client can tell:
//! write and mkdir create missing parents, rm removes a subtree, a transaction works on
//! a copy and fails its commit with EAGAIN if a node it read or wrote has changed since
//! it started, watches fire for changes at or below their path and once on registration.
//!
//! Simplified: directory lists children sorted (xenstored: creation order); a domain's
//! home `/local/domain/<domid>` is created on connect and owned by the domain (libxl
//! makes it read-only for the domain); watch events ignore permissions; of xenstored's
//! quotas only the number of watches a domain other than 0 may hold ([`WATCH_QUOTA`]),
//! so that a client leaking watches meets E2BIG here as it does there. Not
//! simulated: XS_DIRECTORY_PART, RESET_WATCHES and the dom0-only requests (INTRODUCE,
//! RELEASE, RESUME, SET_TARGET, IS_DOMAIN_INTRODUCED, CONTROL), answered ENOSYS.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::decoder::{DecodeError, Decoder};
use crate::reply::{self, Errno, WatchEvent, XsError};
use crate::session::{Incoming, Session};
use crate::wire::{self, Access, Message, MsgType, Permission, Request, check_path, check_watch_path, parse_decimal};

type Tree = BTreeMap<String, Node>;

/// C xenstored's `quota-nb-watch-per-domain` default: a domain other than 0 that holds
/// more watches than this gets E2BIG for another (so the 129th is still taken).
pub const WATCH_QUOTA: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    value: Vec<u8>,
    /// Never empty: the first entry is the owner and the default access.
    permissions: Vec<Permission>,
    /// Changes on every modification of the node (its children list included);
    /// what commits compare to detect conflicts.
    generation: u64,
}

/// A modification watches are told about.
#[derive(Clone, Debug)]
struct Change {
    /// Absolute, or a special name such as "@releaseDomain".
    path: String,
    /// The whole subtree went: watches below the path fire too.
    removed: bool,
}

/// Something to send once the reply is out.
enum Event {
    Change(Change),
    /// A new watch fires once at once, to its own connection only.
    Registered {
        connection: usize,
        path: String,
        token: String,
    },
}

/// One connection to the sim, acting as one domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionId(usize);

struct Connection {
    domid: u16,
    decoder: Decoder,
    output: Vec<u8>,
    /// (path as registered, token).
    watches: Vec<(String, String)>,
    transactions: BTreeMap<u32, Transaction>,
}

struct Transaction {
    /// The tree when the transaction started, and the transaction's own copy.
    base: Tree,
    working: Tree,
    /// Paths read or written, present or not: a change to any of them is a conflict.
    accessed: BTreeSet<String>,
    /// Events held back until commit.
    changes: Vec<Change>,
}

enum EagainCommits {
    Never,
    Next(u32),
    Forever,
}

/// The simulated xenstored.
pub struct Sim {
    tree: Tree,
    generation: u64,
    connections: Vec<Connection>,
    next_tx_id: u32,
    commits: u32,
    eagain_commits: EagainCommits,
    replies_to_drop: usize,
    events: Vec<Event>,
}

impl Default for Sim {
    fn default() -> Sim {
        Sim::new()
    }
}

/// The parent of an absolute path; the root has none.
fn parent(path: &str) -> Option<&str> {
    match path.rfind('/')? {
        0 if path.len() > 1 => Some("/"),
        0 => None,
        slash => Some(&path[..slash]),
    }
}

/// Whether `path` is `ancestor` or below it.
fn is_within(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return path.starts_with('/');
    }
    path.strip_prefix(ancestor).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn home(domid: u16) -> String {
    format!("/local/domain/{domid}")
}

/// A relative path made absolute under the domain's home; others unchanged.
fn absolute(domid: u16, path: &str) -> String {
    if path.starts_with('/') || path.starts_with('@') { path.to_string() } else { format!("{}/{path}", home(domid)) }
}

/// Splits a payload of NUL-terminated strings; anything else is EINVAL.
fn fields(payload: &[u8]) -> Result<Vec<&str>, Errno> {
    let body = payload.strip_suffix(b"\0").ok_or(Errno::EINVAL)?;
    let text = |bytes| core::str::from_utf8(bytes).map_err(|_| Errno::EINVAL);
    body.split(|byte| *byte == 0).map(text).collect()
}

/// The direct methods' paths: valid and absolute.
fn check_absolute(path: &str) -> Result<(), Errno> {
    match check_path(path) {
        Ok(()) if path.starts_with('/') => Ok(()),
        _ => Err(Errno::EINVAL),
    }
}

fn one_path(payload: &[u8]) -> Result<&str, Errno> {
    match fields(payload)?.as_slice() {
        [path] => check_path(path).map(|()| *path).map_err(|_| Errno::EINVAL),
        _ => Err(Errno::EINVAL),
    }
}

/// The tree one request works on (the live one or a transaction's copy), and who asks.
struct View<'a> {
    tree: &'a mut Tree,
    generation: &'a mut u64,
    accessed: &'a mut BTreeSet<String>,
    domid: u16,
}

impl View<'_> {
    fn next_generation(&mut self) -> u64 {
        *self.generation += 1;
        *self.generation
    }

    /// Dom0 and the owner may do anything; others get their own entry, else the default.
    fn access(&self, node: &Node) -> Access {
        let Some((owner, others)) = node.permissions.split_first() else {
            return Access::None;
        };
        if self.domid == 0 || owner.domid == self.domid {
            return Access::Both;
        }
        others.iter().find(|p| p.domid == self.domid).map_or(owner.access, |p| p.access)
    }

    fn readable(&mut self, path: &str) -> Result<&Node, Errno> {
        self.accessed.insert(path.to_string());
        let node = self.tree.get(path).ok_or(Errno::ENOENT)?;
        if !self.access(node).can_read() {
            return Err(Errno::EACCES);
        }
        Ok(node)
    }

    fn touch(&mut self, path: &str) {
        let generation = self.next_generation();
        if let Some(node) = self.tree.get_mut(path) {
            node.generation = generation;
        }
        self.accessed.insert(path.to_string());
    }

    /// Write (`value` given) or mkdir (`None`). Returns whether anything changed.
    fn write(&mut self, path: &str, value: Option<&[u8]>) -> Result<bool, Errno> {
        self.accessed.insert(path.to_string());
        if let Some(node) = self.tree.get(path) {
            let Some(value) = value else { return Ok(false) };
            if !self.access(node).can_write() {
                return Err(Errno::EACCES);
            }
            let generation = self.next_generation();
            if let Some(node) = self.tree.get_mut(path) {
                node.value = value.to_vec();
                node.generation = generation;
            }
            return Ok(true);
        }
        // The closest existing ancestor decides; the missing ones are made top down.
        let mut missing = Vec::from([path]);
        let mut ancestor = parent(path).ok_or(Errno::EINVAL)?;
        while !self.tree.contains_key(ancestor) {
            missing.push(ancestor);
            ancestor = parent(ancestor).ok_or(Errno::EINVAL)?;
        }
        if !self.access(&self.tree[ancestor]).can_write() {
            return Err(Errno::EACCES);
        }
        self.touch(ancestor);
        for new_path in missing.into_iter().rev() {
            let parent_node = &self.tree[parent(new_path).ok_or(Errno::EINVAL)?];
            let mut permissions = parent_node.permissions.clone();
            if self.domid != 0 {
                permissions[0].domid = self.domid; // unprivileged domains own what they make
            }
            let value = match new_path == path {
                true => value.unwrap_or_default().to_vec(),
                false => Vec::new(),
            };
            let generation = self.next_generation();
            self.tree.insert(new_path.to_string(), Node { value, permissions, generation });
            self.accessed.insert(new_path.to_string());
        }
        Ok(true)
    }

    /// Removes the node and its subtree. Returns whether anything changed.
    fn rm(&mut self, path: &str) -> Result<bool, Errno> {
        let parent = parent(path).ok_or(Errno::EINVAL)?;
        self.accessed.insert(path.to_string());
        let Some(node) = self.tree.get(path) else {
            // Absent is fine; an absent parent too is not.
            self.accessed.insert(parent.to_string());
            return if self.tree.contains_key(parent) { Ok(false) } else { Err(Errno::ENOENT) };
        };
        if !self.access(node).can_write() {
            return Err(Errno::EACCES);
        }
        let doomed: Vec<String> = self.tree.keys().filter(|key| is_within(key, path)).cloned().collect();
        for key in doomed {
            self.tree.remove(&key);
            self.accessed.insert(key);
        }
        self.touch(parent);
        Ok(true)
    }

    fn directory(&mut self, path: &str) -> Result<Vec<String>, Errno> {
        self.readable(path)?;
        let prefix = if path == "/" { String::from("/") } else { format!("{path}/") };
        let children = self.tree.range(prefix.clone()..).map(|(key, _)| key);
        let names = children
            .take_while(|key| key.starts_with(&prefix))
            .map(|key| &key[prefix.len()..])
            .filter(|name| !name.is_empty() && !name.contains('/'))
            .map(String::from)
            .collect();
        Ok(names)
    }

    fn set_perms(&mut self, path: &str, permissions: Vec<Permission>) -> Result<(), Errno> {
        self.accessed.insert(path.to_string());
        let node = self.tree.get(path).ok_or(Errno::ENOENT)?;
        if !self.access(node).can_write() {
            return Err(Errno::EACCES);
        }
        let owner = |permissions: &[Permission]| permissions.first().map(|p| p.domid);
        if self.domid != 0 && owner(&node.permissions) != owner(&permissions) {
            return Err(Errno::EPERM); // only dom0 gives nodes away
        }
        let generation = self.next_generation();
        if let Some(node) = self.tree.get_mut(path) {
            node.permissions = permissions;
            node.generation = generation;
        }
        Ok(())
    }
}

impl Sim {
    /// A store holding only the root, owned by dom0 and closed to others.
    pub fn new() -> Sim {
        let permissions = Vec::from([Permission { domid: 0, access: Access::None }]);
        let root = Node { value: Vec::new(), permissions, generation: 0 };
        Sim {
            tree: Tree::from([(String::from("/"), root)]),
            generation: 0,
            connections: Vec::new(),
            next_tx_id: 1,
            commits: 0,
            eagain_commits: EagainCommits::Never,
            replies_to_drop: 0,
            events: Vec::new(),
        }
    }

    /// A new connection for `domid`, whose home `/local/domain/<domid>` is created
    /// (if missing) and owned by it.
    pub fn connect(&mut self, domid: u16) -> ConnectionId {
        let home = home(domid);
        if !self.tree.contains_key(&home) {
            let owner = Vec::from([Permission { domid, access: Access::None }]);
            let made = self.as_dom0(|view| {
                view.write(&home, None)?;
                view.set_perms(&home, owner)
            });
            debug_assert!(made.is_ok());
            self.flush_events();
        }
        self.connections.push(Connection {
            domid,
            decoder: Decoder::new(),
            output: Vec::new(),
            watches: Vec::new(),
            transactions: BTreeMap::new(),
        });
        ConnectionId(self.connections.len() - 1)
    }

    /// Bytes from the client, in any pieces; each complete request is answered at once.
    /// After a framing error the connection is broken and ignores everything.
    pub fn send(&mut self, connection: ConnectionId, bytes: &[u8]) {
        for message in self.connections[connection.0].decoder.feed(bytes).into_iter().flatten() {
            self.handle(connection.0, message);
        }
    }

    /// Everything sent to the client since the last call: replies and watch events.
    pub fn receive(&mut self, connection: ConnectionId) -> Vec<u8> {
        core::mem::take(&mut self.connections[connection.0].output)
    }

    /// The framing error that broke the connection, if one did (xenstored would drop it).
    pub fn broken(&self, connection: ConnectionId) -> Option<DecodeError> {
        self.connections[connection.0].decoder.broken()
    }

    /// A node's value, read directly (no permissions, no transaction). The direct
    /// methods take absolute paths.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.tree.get(path).map(|node| node.value.clone())
    }

    /// A node's permissions, read directly.
    pub fn get_perms(&self, path: &str) -> Option<Vec<Permission>> {
        self.tree.get(path).map(|node| node.permissions.clone())
    }

    /// Writes as dom0 outside any transaction, as a toolstack or a rival would;
    /// watches fire.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        check_absolute(path)?;
        self.as_dom0(|view| view.write(path, Some(value)))?;
        self.events.push(Event::Change(Change { path: path.to_string(), removed: false }));
        self.flush_events();
        Ok(())
    }

    /// Removes a subtree as dom0; watches fire.
    pub fn rm(&mut self, path: &str) -> Result<(), Errno> {
        check_absolute(path)?;
        if self.as_dom0(|view| view.rm(path))? {
            self.events.push(Event::Change(Change { path: path.to_string(), removed: true }));
            self.flush_events();
        }
        Ok(())
    }

    /// Sets permissions as dom0; watches fire.
    pub fn set_perms(&mut self, path: &str, permissions: &[Permission]) -> Result<(), Errno> {
        check_absolute(path)?;
        if permissions.is_empty() {
            return Err(Errno::EINVAL);
        }
        self.as_dom0(|view| view.set_perms(path, permissions.to_vec()))?;
        self.events.push(Event::Change(Change { path: path.to_string(), removed: false }));
        self.flush_events();
        Ok(())
    }

    /// Fires a special watch such as "@releaseDomain" or "@introduceDomain".
    pub fn fire_special_watch(&mut self, name: &str) {
        self.events.push(Event::Change(Change { path: name.to_string(), removed: false }));
        self.flush_events();
    }

    /// Every later commit fails with EAGAIN.
    pub fn fail_commits_with_eagain_forever(&mut self) {
        self.eagain_commits = EagainCommits::Forever;
    }

    /// The next `count` commits fail with EAGAIN.
    pub fn fail_next_commits_with_eagain(&mut self, count: u32) {
        self.eagain_commits = EagainCommits::Next(count);
    }

    /// The next `count` replies are lost (the requests still take effect); watch events
    /// still arrive.
    pub fn drop_replies(&mut self, count: usize) {
        self.replies_to_drop = count;
    }

    /// Puts raw bytes on the connection's output, e.g. a malformed message.
    pub fn inject(&mut self, connection: ConnectionId, bytes: &[u8]) {
        self.connections[connection.0].output.extend_from_slice(bytes);
    }

    /// How many commits (TRANSACTION_END "T") the sim has received.
    pub fn commits(&self) -> u32 {
        self.commits
    }

    fn as_dom0<T>(&mut self, operation: impl FnOnce(&mut View) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut accessed = BTreeSet::new();
        let mut view =
            View { tree: &mut self.tree, generation: &mut self.generation, accessed: &mut accessed, domid: 0 };
        operation(&mut view)
    }

    fn handle(&mut self, connection: usize, message: Message) {
        let header = message.header;
        let error = |errno: Errno| {
            let parts: [&[u8]; 2] = [errno.name().as_bytes(), b"\0"];
            wire::encode(MsgType::Error, header.req_id, header.tx_id, &parts)
        };
        let reply = match self.execute(connection, &message) {
            // A reply too long for a message (a big directory, say) is E2BIG, as in xenstored.
            Ok(payload) => {
                wire::encode(header.msg_type, header.req_id, header.tx_id, &[&payload]).or_else(|_| error(Errno::E2BIG))
            }
            Err(errno) => error(errno),
        };
        if self.replies_to_drop > 0 {
            self.replies_to_drop -= 1;
        } else if let Ok(bytes) = reply {
            self.connections[connection].output.extend(bytes);
        }
        self.flush_events();
    }

    /// Carries out one request; the reply payload or the error to send.
    fn execute(&mut self, connection: usize, message: &Message) -> Result<Vec<u8>, Errno> {
        let header = message.header;
        let payload = message.payload.as_slice();
        match header.msg_type {
            MsgType::Read
            | MsgType::Directory
            | MsgType::GetPerms
            | MsgType::Mkdir
            | MsgType::Rm
            | MsgType::Write
            | MsgType::SetPerms => self.node_request(connection, message),
            MsgType::Watch => {
                let (path, token) = watch_fields(payload)?;
                let domid = self.connections[connection].domid;
                let held: usize = self.connections.iter().filter(|c| c.domid == domid).map(|c| c.watches.len()).sum();
                if domid != 0 && held > WATCH_QUOTA {
                    return Err(Errno::E2BIG);
                }
                let watches = &mut self.connections[connection].watches;
                if watches.iter().any(|(p, t)| *p == path && *t == token) {
                    return Err(Errno::EEXIST);
                }
                watches.push((path.clone(), token.clone()));
                self.events.push(Event::Registered { connection, path, token });
                Ok(b"OK\0".to_vec())
            }
            MsgType::Unwatch => {
                let (path, token) = watch_fields(payload)?;
                let watches = &mut self.connections[connection].watches;
                let index = watches.iter().position(|(p, t)| *p == path && *t == token);
                let index = index.ok_or(Errno::ENOENT)?;
                watches.remove(index);
                Ok(b"OK\0".to_vec())
            }
            MsgType::TransactionStart => {
                if header.tx_id != 0 {
                    return Err(Errno::EBUSY);
                }
                if !matches!(payload, b"" | b"\0") {
                    return Err(Errno::EINVAL);
                }
                let tx_id = self.next_tx_id;
                self.next_tx_id = self.next_tx_id.checked_add(1).unwrap_or(1);
                let transaction = Transaction {
                    base: self.tree.clone(),
                    working: self.tree.clone(),
                    accessed: BTreeSet::new(),
                    changes: Vec::new(),
                };
                self.connections[connection].transactions.insert(tx_id, transaction);
                Ok(format!("{tx_id}\0").into_bytes())
            }
            MsgType::TransactionEnd => {
                let commit = match payload {
                    b"T\0" => true,
                    b"F\0" => false,
                    _ => return Err(Errno::EINVAL),
                };
                let transactions = &mut self.connections[connection].transactions;
                let transaction = transactions.remove(&header.tx_id).ok_or(Errno::ENOENT)?;
                if commit {
                    self.commit(transaction)?;
                }
                Ok(b"OK\0".to_vec())
            }
            MsgType::GetDomainPath => match fields(payload)?.as_slice() {
                [number] => {
                    let domid = parse_decimal(number).and_then(|n| u16::try_from(n).ok());
                    let domid = domid.ok_or(Errno::EINVAL)?;
                    Ok(format!("{}\0", home(domid)).into_bytes())
                }
                _ => Err(Errno::EINVAL),
            },
            MsgType::WatchEvent | MsgType::Error => Err(Errno::EINVAL),
            _ => Err(Errno::ENOSYS),
        }
    }

    /// Requests on one node, in the live tree or in a transaction.
    fn node_request(&mut self, connection: usize, message: &Message) -> Result<Vec<u8>, Errno> {
        let header = message.header;
        let payload = message.payload.as_slice();
        let Sim { tree, generation, connections, events, .. } = self;
        let Connection { domid, transactions, .. } = &mut connections[connection];
        let mut scratch = BTreeSet::new();
        let (tree, accessed, held_changes) = if header.tx_id == 0 {
            (tree, &mut scratch, None)
        } else {
            let transaction = transactions.get_mut(&header.tx_id).ok_or(Errno::ENOENT)?;
            (&mut transaction.working, &mut transaction.accessed, Some(&mut transaction.changes))
        };
        let domid = *domid;
        let mut view = View { tree, generation, accessed, domid };
        let ok = b"OK\0".to_vec();
        let (reply, change) = match header.msg_type {
            MsgType::Read => {
                let path = absolute(domid, one_path(payload)?);
                (view.readable(&path)?.value.clone(), None)
            }
            MsgType::Directory => {
                let path = absolute(domid, one_path(payload)?);
                let names = view.directory(&path)?;
                let listing = names.iter().flat_map(|name| [name.as_bytes(), b"\0"]).flatten();
                (listing.copied().collect(), None)
            }
            MsgType::GetPerms => {
                let path = absolute(domid, one_path(payload)?);
                let permissions = &view.readable(&path)?.permissions;
                let text: String = permissions.iter().map(|p| format!("{p}\0")).collect();
                (text.into_bytes(), None)
            }
            MsgType::Write => {
                let nul = payload.iter().position(|byte| *byte == 0).ok_or(Errno::EINVAL)?;
                let path = core::str::from_utf8(&payload[..nul]).map_err(|_| Errno::EINVAL)?;
                check_path(path).map_err(|_| Errno::EINVAL)?;
                let path = absolute(domid, path);
                let changed = view.write(&path, Some(&payload[nul + 1..]))?;
                (ok, changed.then_some(Change { path, removed: false }))
            }
            MsgType::Mkdir => {
                let path = absolute(domid, one_path(payload)?);
                let changed = view.write(&path, None)?;
                (ok, changed.then_some(Change { path, removed: false }))
            }
            MsgType::Rm => {
                let path = absolute(domid, one_path(payload)?);
                let changed = view.rm(&path)?;
                (ok, changed.then_some(Change { path, removed: true }))
            }
            MsgType::SetPerms => {
                let fields = fields(payload)?;
                let (path, permissions) = fields.split_first().ok_or(Errno::EINVAL)?;
                check_path(path).map_err(|_| Errno::EINVAL)?;
                let permissions: Option<Vec<Permission>> = permissions.iter().map(|p| Permission::parse(p)).collect();
                let permissions = permissions.filter(|p| !p.is_empty()).ok_or(Errno::EINVAL)?;
                let path = absolute(domid, path);
                view.set_perms(&path, permissions)?;
                (ok, Some(Change { path, removed: false }))
            }
            _ => return Err(Errno::EINVAL),
        };
        match (change, held_changes) {
            (Some(change), Some(held)) => held.push(change),
            (Some(change), None) => events.push(Event::Change(change)),
            (None, _) => {}
        }
        Ok(reply)
    }

    /// Applies a transaction unless something it used changed meanwhile (EAGAIN).
    fn commit(&mut self, transaction: Transaction) -> Result<(), Errno> {
        self.commits += 1;
        match self.eagain_commits {
            EagainCommits::Forever => return Err(Errno::EAGAIN),
            EagainCommits::Next(count) if count > 0 => {
                self.eagain_commits = EagainCommits::Next(count - 1);
                return Err(Errno::EAGAIN);
            }
            EagainCommits::Next(_) | EagainCommits::Never => {}
        }
        let generation = |tree: &Tree, path: &String| tree.get(path).map(|node| node.generation);
        let conflict =
            transaction.accessed.iter().any(|path| generation(&self.tree, path) != generation(&transaction.base, path));
        if conflict {
            return Err(Errno::EAGAIN);
        }
        for path in transaction.accessed {
            match transaction.working.get(&path) {
                Some(node) => self.tree.insert(path, node.clone()),
                None => self.tree.remove(&path),
            };
        }
        self.events.extend(transaction.changes.into_iter().map(Event::Change));
        Ok(())
    }

    /// Sends pending watch events to every matching watch.
    fn flush_events(&mut self) {
        for event in core::mem::take(&mut self.events) {
            match event {
                Event::Registered { connection, path, token } => {
                    push_event(&mut self.connections[connection].output, &path, &token);
                }
                Event::Change(change) => {
                    for connection in &mut self.connections {
                        for (watch_path, token) in &connection.watches {
                            let watched = absolute(connection.domid, watch_path);
                            let event_path = if is_within(&change.path, &watched) {
                                change.path.clone()
                            } else if change.removed && is_within(&watched, &change.path) {
                                watched // a removed ancestor reports the watched path
                            } else {
                                continue;
                            };
                            // A relative watch hears relative paths.
                            let relative_base = format!("{}/", home(connection.domid));
                            let shown = match watch_path.starts_with(['/', '@']) {
                                true => event_path.as_str(),
                                false => event_path.strip_prefix(&relative_base).unwrap_or(&event_path),
                            };
                            push_event(&mut connection.output, shown, token);
                        }
                    }
                }
            }
        }
    }
}

fn watch_fields(payload: &[u8]) -> Result<(String, String), Errno> {
    match fields(payload)?.as_slice() {
        // A third, reserved field may follow.
        [path, token] | [path, token, _] => {
            check_watch_path(path).map_err(|_| Errno::EINVAL)?;
            Ok((path.to_string(), token.to_string()))
        }
        _ => Err(Errno::EINVAL),
    }
}

fn push_event(output: &mut Vec<u8>, path: &str, token: &str) {
    let parts: [&[u8]; 4] = [path.as_bytes(), b"\0", token.as_bytes(), b"\0"];
    // An event too long for a message cannot be sent; xenstored would drop it too.
    if let Ok(bytes) = wire::encode(MsgType::WatchEvent, 0, 0, &parts) {
        output.extend(bytes);
    }
}

/// A blocking client on one sim connection, for tests: a [`Session`] and a [`Decoder`]
/// over [`Sim::send`] and [`Sim::receive`]. Watch events that arrive meanwhile are kept
/// for [`Client::watch_events`].
pub struct Client {
    connection: ConnectionId,
    session: Session,
    decoder: Decoder,
    events: Vec<WatchEvent>,
}

impl Client {
    pub fn connect(sim: &mut Sim, domid: u16) -> Client {
        let connection = sim.connect(domid);
        Client { connection, session: Session::new(), decoder: Decoder::new(), events: Vec::new() }
    }

    pub fn connection(&self) -> ConnectionId {
        self.connection
    }

    /// Sends one request and returns its checked reply.
    ///
    /// # Panics
    /// If the request does not encode, no reply comes (see [`Sim::drop_replies`]), or
    /// the sim breaks the protocol: each is a failed test.
    pub fn call(&mut self, sim: &mut Sim, tx_id: u32, request: &Request) -> Result<Message, XsError> {
        let (req_id, bytes) = self.session.start(tx_id, request).expect("request encodes");
        sim.send(self.connection, &bytes);
        let mut answer = None;
        for message in self.decoder.feed(&sim.receive(self.connection)) {
            match self.session.accept(message.expect("the sim frames messages")) {
                Incoming::Reply { req_id: id, result } if id == req_id => answer = Some(result),
                Incoming::Watch(event) => self.events.push(event),
                other => panic!("unexpected from the sim: {other:?}"),
            }
        }
        answer.unwrap_or_else(|| {
            self.session.cancel(req_id);
            panic!("no reply to {request:?}")
        })
    }

    /// Watch events received so far, oldest first, plus any waiting in the sim.
    pub fn watch_events(&mut self, sim: &mut Sim) -> Vec<WatchEvent> {
        for message in self.decoder.feed(&sim.receive(self.connection)) {
            match self.session.accept(message.expect("the sim frames messages")) {
                Incoming::Watch(event) => self.events.push(event),
                other => panic!("unexpected from the sim: {other:?}"),
            }
        }
        core::mem::take(&mut self.events)
    }

    pub fn read(&mut self, sim: &mut Sim, tx_id: u32, path: &str) -> Result<Vec<u8>, XsError> {
        reply::read(&self.call(sim, tx_id, &Request::Read { path })?)
    }

    pub fn write(&mut self, sim: &mut Sim, tx_id: u32, path: &str, value: &[u8]) -> Result<(), XsError> {
        reply::ok(&self.call(sim, tx_id, &Request::Write { path, value })?, MsgType::Write)
    }

    pub fn mkdir(&mut self, sim: &mut Sim, tx_id: u32, path: &str) -> Result<(), XsError> {
        reply::ok(&self.call(sim, tx_id, &Request::Mkdir { path })?, MsgType::Mkdir)
    }

    pub fn rm(&mut self, sim: &mut Sim, tx_id: u32, path: &str) -> Result<(), XsError> {
        reply::ok(&self.call(sim, tx_id, &Request::Rm { path })?, MsgType::Rm)
    }

    pub fn directory(&mut self, sim: &mut Sim, tx_id: u32, path: &str) -> Result<Vec<String>, XsError> {
        reply::directory(&self.call(sim, tx_id, &Request::Directory { path })?)
    }

    pub fn get_perms(&mut self, sim: &mut Sim, tx_id: u32, path: &str) -> Result<Vec<Permission>, XsError> {
        reply::get_perms(&self.call(sim, tx_id, &Request::GetPerms { path })?)
    }

    pub fn set_perms(
        &mut self,
        sim: &mut Sim,
        tx_id: u32,
        path: &str,
        permissions: &[Permission],
    ) -> Result<(), XsError> {
        let request = Request::SetPerms { path, permissions };
        reply::ok(&self.call(sim, tx_id, &request)?, MsgType::SetPerms)
    }

    pub fn get_domain_path(&mut self, sim: &mut Sim, domid: u16) -> Result<String, XsError> {
        reply::get_domain_path(&self.call(sim, 0, &Request::GetDomainPath { domid })?)
    }

    pub fn watch(&mut self, sim: &mut Sim, path: &str, token: &str) -> Result<(), XsError> {
        reply::ok(&self.call(sim, 0, &Request::Watch { path, token })?, MsgType::Watch)
    }

    pub fn unwatch(&mut self, sim: &mut Sim, path: &str, token: &str) -> Result<(), XsError> {
        reply::ok(&self.call(sim, 0, &Request::Unwatch { path, token })?, MsgType::Unwatch)
    }

    pub fn transaction_start(&mut self, sim: &mut Sim) -> Result<u32, XsError> {
        reply::transaction_start(&self.call(sim, 0, &Request::TransactionStart)?)
    }

    pub fn transaction_end(&mut self, sim: &mut Sim, tx_id: u32, commit: bool) -> Result<(), XsError> {
        let request = Request::TransactionEnd { commit };
        reply::ok(&self.call(sim, tx_id, &request)?, MsgType::TransactionEnd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn event(path: &str, token: &str) -> WatchEvent {
        WatchEvent { path: path.into(), token: token.into() }
    }

    fn errno(errno: Errno) -> XsError {
        XsError::Errno(errno)
    }

    #[test]
    fn a_domain_holds_at_most_the_watch_quota_and_dom0_is_not_counted() {
        let mut sim = Sim::new();
        let mut guest = Client::connect(&mut sim, 7);
        for i in 0..=WATCH_QUOTA {
            guest.watch(&mut sim, "/a", &format!("t{i}")).unwrap();
        }
        assert_eq!(guest.watch(&mut sim, "/a", "one-more"), Err(errno(Errno::E2BIG)));
        // Unwatching makes room again.
        guest.unwatch(&mut sim, "/a", "t0").unwrap();
        guest.watch(&mut sim, "/a", "one-more").unwrap();
        let mut dom0 = Client::connect(&mut sim, 0);
        for i in 0..=2 * WATCH_QUOTA {
            dom0.watch(&mut sim, "/b", &format!("d{i}")).unwrap();
        }
    }

    #[test]
    fn write_creates_parents_and_read_reads() {
        let mut sim = Sim::new();
        let mut client = Client::connect(&mut sim, 0);
        client.write(&mut sim, 0, "/a/b/c", b"v").unwrap();
        assert_eq!(client.read(&mut sim, 0, "/a/b/c"), Ok(b"v".to_vec()));
        assert_eq!(client.read(&mut sim, 0, "/a/b"), Ok(vec![]));
        assert_eq!(client.read(&mut sim, 0, "/a/x"), Err(errno(Errno::ENOENT)));
        assert_eq!(client.directory(&mut sim, 0, "/a"), Ok(vec!["b".into()]));
        assert_eq!(client.directory(&mut sim, 0, "/a/b/c"), Ok(vec![]));
        assert_eq!(client.directory(&mut sim, 0, "/"), Ok(vec!["a".into(), "local".into()]));
        client.write(&mut sim, 0, "/a/bin", b"\0raw\0").unwrap();
        assert_eq!(sim.read("/a/bin"), Some(b"\0raw\0".to_vec()));
    }

    #[test]
    fn mkdir_keeps_values_and_rm_removes_subtrees() {
        let mut sim = Sim::new();
        let mut client = Client::connect(&mut sim, 0);
        client.write(&mut sim, 0, "/a/b", b"keep").unwrap();
        client.mkdir(&mut sim, 0, "/a/b").unwrap();
        client.mkdir(&mut sim, 0, "/a/b/c/d").unwrap();
        assert_eq!(sim.read("/a/b"), Some(b"keep".to_vec()));
        client.rm(&mut sim, 0, "/a/b").unwrap();
        assert_eq!(sim.read("/a/b/c/d"), None);
        assert_eq!(sim.read("/a"), Some(vec![]));
        client.rm(&mut sim, 0, "/a/b").unwrap(); // absent, parent present: fine
        assert_eq!(client.rm(&mut sim, 0, "/a/b/c"), Err(errno(Errno::ENOENT)));
        assert_eq!(client.rm(&mut sim, 0, "/"), Err(errno(Errno::EINVAL)));
    }

    #[test]
    fn relative_paths_and_domain_path() {
        let mut sim = Sim::new();
        let mut client = Client::connect(&mut sim, 7);
        assert_eq!(client.get_domain_path(&mut sim, 7), Ok("/local/domain/7".into()));
        client.write(&mut sim, 0, "device/vbd", b"x").unwrap();
        assert_eq!(sim.read("/local/domain/7/device/vbd"), Some(b"x".to_vec()));
        assert_eq!(client.directory(&mut sim, 0, "device"), Ok(vec!["vbd".into()]));
    }

    #[test]
    fn permissions_are_enforced() {
        let mut sim = Sim::new();
        let mut guest = Client::connect(&mut sim, 5);
        sim.write("/backend/x", b"secret").unwrap();
        assert_eq!(guest.read(&mut sim, 0, "/backend/x"), Err(errno(Errno::EACCES)));
        assert_eq!(guest.write(&mut sim, 0, "/backend/y", b""), Err(errno(Errno::EACCES)));
        let readable = [Permission { domid: 0, access: Access::None }, Permission { domid: 5, access: Access::Read }];
        sim.set_perms("/backend/x", &readable).unwrap();
        assert_eq!(guest.read(&mut sim, 0, "/backend/x"), Ok(b"secret".to_vec()));
        assert_eq!(guest.get_perms(&mut sim, 0, "/backend/x"), Ok(readable.to_vec()));
        assert_eq!(guest.write(&mut sim, 0, "/backend/x", b"mine"), Err(errno(Errno::EACCES)));
        // In its home the guest owns what it creates, and may not give it away.
        guest.write(&mut sim, 0, "data/a", b"1").unwrap();
        let owner = sim.get_perms("/local/domain/5/data/a").unwrap()[0];
        assert_eq!(owner.domid, 5);
        let give_away = [Permission { domid: 0, access: Access::Read }];
        assert_eq!(guest.set_perms(&mut sim, 0, "data/a", &give_away), Err(errno(Errno::EPERM)));
        let share = [Permission { domid: 5, access: Access::Read }];
        guest.set_perms(&mut sim, 0, "data/a", &share).unwrap();
    }

    #[test]
    fn transactions_are_isolated_until_commit() {
        let mut sim = Sim::new();
        let mut client = Client::connect(&mut sim, 0);
        let mut watcher = Client::connect(&mut sim, 0);
        watcher.watch(&mut sim, "/t", "w").unwrap();
        assert_eq!(watcher.watch_events(&mut sim), [event("/t", "w")]);
        let tx_id = client.transaction_start(&mut sim).unwrap();
        assert_ne!(tx_id, 0);
        client.write(&mut sim, tx_id, "/t/a", b"1").unwrap();
        assert_eq!(client.read(&mut sim, tx_id, "/t/a"), Ok(b"1".to_vec()));
        assert_eq!(client.read(&mut sim, 0, "/t/a"), Err(errno(Errno::ENOENT)));
        assert_eq!(watcher.watch_events(&mut sim), []);
        client.transaction_end(&mut sim, tx_id, true).unwrap();
        assert_eq!(sim.read("/t/a"), Some(b"1".to_vec()));
        assert_eq!(watcher.watch_events(&mut sim), [event("/t/a", "w")]);
        // Abandoned: nothing happens; the id is gone.
        let tx_id = client.transaction_start(&mut sim).unwrap();
        client.write(&mut sim, tx_id, "/t/b", b"2").unwrap();
        client.transaction_end(&mut sim, tx_id, false).unwrap();
        assert_eq!(sim.read("/t/b"), None);
        assert_eq!(client.read(&mut sim, tx_id, "/t/a"), Err(errno(Errno::ENOENT)));
        assert_eq!(client.transaction_end(&mut sim, tx_id, true), Err(errno(Errno::ENOENT)));
    }

    #[test]
    fn commit_conflicts_only_on_what_the_transaction_used() {
        let mut sim = Sim::new();
        let mut client = Client::connect(&mut sim, 0);
        sim.write("/a", b"0").unwrap();
        sim.write("/b", b"0").unwrap();
        // Unrelated write: commits.
        let tx_id = client.transaction_start(&mut sim).unwrap();
        client.read(&mut sim, tx_id, "/a").unwrap();
        sim.write("/b", b"1").unwrap();
        client.transaction_end(&mut sim, tx_id, true).unwrap();
        // A node only read changed: EAGAIN, and nothing is applied.
        let tx_id = client.transaction_start(&mut sim).unwrap();
        client.read(&mut sim, tx_id, "/a").unwrap();
        client.write(&mut sim, tx_id, "/c", b"x").unwrap();
        sim.write("/a", b"2").unwrap();
        assert_eq!(client.transaction_end(&mut sim, tx_id, true), Err(errno(Errno::EAGAIN)));
        assert_eq!(sim.read("/c"), None);
        // A missing node read, then created by someone else: EAGAIN.
        let tx_id = client.transaction_start(&mut sim).unwrap();
        assert!(client.read(&mut sim, tx_id, "/d").is_err());
        sim.write("/d", b"").unwrap();
        assert_eq!(client.transaction_end(&mut sim, tx_id, true), Err(errno(Errno::EAGAIN)));
        // A listed directory gained a child: EAGAIN.
        let tx_id = client.transaction_start(&mut sim).unwrap();
        client.directory(&mut sim, tx_id, "/").unwrap();
        sim.write("/e", b"").unwrap();
        assert_eq!(client.transaction_end(&mut sim, tx_id, true), Err(errno(Errno::EAGAIN)));
        assert_eq!(sim.commits(), 4);
    }

    #[test]
    fn injected_eagain_commits() {
        let mut sim = Sim::new();
        let mut client = Client::connect(&mut sim, 0);
        sim.fail_next_commits_with_eagain(2);
        for expected in [Err(errno(Errno::EAGAIN)), Err(errno(Errno::EAGAIN)), Ok(())] {
            let tx_id = client.transaction_start(&mut sim).unwrap();
            client.write(&mut sim, tx_id, "/x", b"1").unwrap();
            assert_eq!(client.transaction_end(&mut sim, tx_id, true), expected);
        }
        assert_eq!(sim.read("/x"), Some(b"1".to_vec()));
    }

    #[test]
    fn watches_fire_on_registration_and_below_their_path() {
        let mut sim = Sim::new();
        let mut client = Client::connect(&mut sim, 3);
        client.watch(&mut sim, "/backend", "be").unwrap();
        client.watch(&mut sim, "device", "rel").unwrap();
        let registered = [event("/backend", "be"), event("device", "rel")];
        assert_eq!(client.watch_events(&mut sim), registered);
        sim.write("/backend/vbd/3/768/state", b"4").unwrap();
        sim.write("/backendx", b"").unwrap(); // a sibling with a common prefix: no event
        sim.write("/local/domain/3/device/vbd/768/state", b"1").unwrap();
        assert_eq!(
            client.watch_events(&mut sim),
            [event("/backend/vbd/3/768/state", "be"), event("device/vbd/768/state", "rel")]
        );
        assert_eq!(client.watch(&mut sim, "/backend", "be"), Err(errno(Errno::EEXIST)));
        client.unwatch(&mut sim, "/backend", "be").unwrap();
        assert_eq!(client.unwatch(&mut sim, "/backend", "be"), Err(errno(Errno::ENOENT)));
        sim.write("/backend/vbd", b"").unwrap();
        assert_eq!(client.watch_events(&mut sim), []);
    }

    #[test]
    fn removing_an_ancestor_fires_the_watched_path() {
        let mut sim = Sim::new();
        let mut client = Client::connect(&mut sim, 0);
        sim.write("/a/b/c", b"").unwrap();
        client.watch(&mut sim, "/a/b/c", "deep").unwrap();
        client.watch(&mut sim, "/", "root").unwrap();
        client.watch_events(&mut sim);
        sim.rm("/a").unwrap();
        assert_eq!(client.watch_events(&mut sim), [event("/a/b/c", "deep"), event("/a", "root")]);
    }

    #[test]
    fn special_watches() {
        let mut sim = Sim::new();
        let mut client = Client::connect(&mut sim, 0);
        client.watch(&mut sim, "@releaseDomain", "rel").unwrap();
        client.watch(&mut sim, "/", "root").unwrap();
        client.watch_events(&mut sim);
        sim.fire_special_watch("@releaseDomain");
        sim.fire_special_watch("@introduceDomain");
        assert_eq!(client.watch_events(&mut sim), [event("@releaseDomain", "rel")]);
    }

    #[test]
    fn reply_comes_before_the_registration_event() {
        let mut sim = Sim::new();
        let connection = sim.connect(0);
        sim.send(connection, &wire::watch(9, 0, "/w", "t").unwrap());
        let messages = Decoder::new().feed(&sim.receive(connection));
        let types: Vec<MsgType> = messages.iter().map(|m| m.as_ref().unwrap().header.msg_type).collect();
        assert_eq!(types, [MsgType::Watch, MsgType::WatchEvent]);
    }

    #[test]
    fn dropped_replies_still_take_effect() {
        let mut sim = Sim::new();
        let connection = sim.connect(0);
        let mut session = Session::new();
        sim.drop_replies(1);
        let (lost, bytes) = session.start(0, &Request::Write { path: "/x", value: b"1" }).unwrap();
        sim.send(connection, &bytes);
        assert_eq!(sim.receive(connection), []);
        assert_eq!(sim.read("/x"), Some(b"1".to_vec()));
        assert!(session.cancel(lost));
        let (req_id, bytes) = session.start(0, &Request::Read { path: "/x" }).unwrap();
        sim.send(connection, &bytes);
        let message = Decoder::new().feed(&sim.receive(connection)).remove(0).unwrap();
        match session.accept(message) {
            Incoming::Reply { req_id: id, result: Ok(reply) } => {
                assert_eq!(id, req_id);
                assert_eq!(reply::read(&reply), Ok(b"1".to_vec()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_requests() {
        let mut sim = Sim::new();
        let connection = sim.connect(0);
        let mut decoder = Decoder::new();
        let mut answer = |sim: &mut Sim, bytes: &[u8]| {
            sim.send(connection, bytes);
            let message = decoder.feed(&sim.receive(connection)).remove(0).unwrap();
            reply::payload_of(&message, MsgType::Read).map(|_| ())
        };
        // Missing NUL, two paths, a bad path, an unknown transaction, unsupported types.
        let cases: [(&[&[u8]], MsgType, u32, Errno); 5] = [
            (&[b"/a"], MsgType::Read, 0, Errno::EINVAL),
            (&[b"/a\0/b\0"], MsgType::Read, 0, Errno::EINVAL),
            (&[b"/a//b\0"], MsgType::Read, 0, Errno::EINVAL),
            (&[b"/a\0"], MsgType::Read, 77, Errno::ENOENT),
            (&[b"1\0"], MsgType::Release, 0, Errno::ENOSYS),
        ];
        for (payload, msg_type, tx_id, expected) in cases {
            let bytes = wire::encode(msg_type, 1, tx_id, payload).unwrap();
            assert_eq!(answer(&mut sim, &bytes), Err(errno(expected)), "{payload:?}");
        }
        // An oversize header breaks the connection for good.
        let header = wire::Header { msg_type: MsgType::Write, req_id: 2, tx_id: 0, len: 5000 };
        sim.send(connection, &header.encode());
        sim.send(connection, &wire::read(3, 0, "/").unwrap());
        assert_eq!(sim.broken(connection), Some(DecodeError::PayloadTooLong(5000)));
        assert_eq!(sim.receive(connection), []);
    }

    #[test]
    fn injected_bytes_reach_the_client() {
        let mut sim = Sim::new();
        let connection = sim.connect(0);
        sim.inject(connection, &wire::encode(MsgType::WatchEvent, 0, 0, &[b"/x\0"]).unwrap());
        let message = Decoder::new().feed(&sim.receive(connection)).remove(0).unwrap();
        assert!(matches!(Session::new().accept(message), Incoming::ProtocolError(_)));
    }

    #[test]
    fn oversize_replies_are_e2big() {
        let mut sim = Sim::new();
        let mut client = Client::connect(&mut sim, 0);
        for index in 0..300 {
            sim.write(&format!("/many/child-number-{index}"), b"").unwrap();
        }
        assert_eq!(client.directory(&mut sim, 0, "/many"), Err(errno(Errno::E2BIG)));
        assert_eq!(sim.write("relative", b""), Err(Errno::EINVAL));
    }

    #[test]
    fn path_helpers() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/a", "/"));
        assert!(!is_within("@releaseDomain", "/"));
    }
}
