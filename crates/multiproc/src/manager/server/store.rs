//! The server's table of objects, and the dispatch of requests to them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::super::error::RemoteError;
use super::super::protocol::{Blob, Kind, LEASE, ObjectId, Op, Payload, Reply, Request, Single};
use super::super::registry::{HostedObject, Table, panic_message};
use super::collections::{self, Dict};
use super::sync::{BarrierObject, EventObject, LockObject, QueueObject, SemaphoreObject};
use super::{Ctx, lock};

/// An object the server hosts.
enum Object {
    Dict(Mutex<Dict>),
    List(Mutex<Vec<Vec<u8>>>),
    Namespace(Mutex<BTreeMap<String, Vec<u8>>>),
    Value(Mutex<Vec<u8>>),
    Queue(QueueObject),
    Lock(LockObject),
    Event(EventObject),
    Barrier(BarrierObject),
    Semaphore(SemaphoreObject),
    User(Mutex<Box<dyn HostedObject>>),
}

impl Object {
    fn kind_name(&self) -> &'static str {
        match self {
            Object::Dict(_) => "dict",
            Object::List(_) => "list",
            Object::Namespace(_) => "namespace",
            Object::Value(_) => "value",
            Object::Queue(_) => "queue",
            Object::Lock(_) => "lock",
            Object::Event(_) => "event",
            Object::Barrier(_) => "barrier",
            Object::Semaphore(_) => "semaphore",
            Object::User(_) => "user object",
        }
    }

    fn call(&self, op: Op, ctx: &Ctx<'_>) -> Reply {
        match (self, op) {
            (Object::Dict(d), Op::Dict(op)) => Dict::call(d, op),
            (Object::List(l), Op::List(op)) => collections::list(l, op),
            (Object::Namespace(n), Op::Namespace(op)) => collections::namespace(n, op),
            (Object::Value(v), Op::Value(op)) => collections::value(v, op),
            (Object::Queue(q), Op::Queue(op)) => q.call(op, ctx),
            (Object::Lock(l), Op::Lock(op)) => l.call(op, ctx),
            (Object::Event(e), Op::Event(op)) => e.call(op, ctx),
            (Object::Barrier(b), Op::Barrier(op)) => b.call(op, ctx),
            (Object::Semaphore(s), Op::Semaphore(op)) => s.call(op, ctx),
            (Object::User(u), Op::User(call)) => {
                lock(u).call(&call.0).map(|r| Payload::Value(Blob(r)))
            }
            (object, op) => Err(RemoteError::NoSuchMethod {
                object: object.kind_name().into(),
                method: op.kind_name().into(),
            }),
        }
    }
}

/// Every object of the server, with its count of proxies.
pub(crate) struct Store {
    objects: Mutex<HashMap<ObjectId, (u64, Arc<Object>)>>,
    /// References taken by [`Single::Lease`], oldest first, with the time
    /// they expire.
    leases: Mutex<VecDeque<(Instant, ObjectId)>>,
    next: AtomicU64,
    types: Table,
    /// The longest request accepted.
    pub(crate) limit: u64,
}

impl Store {
    /// An empty store that can make the registered `types`.
    pub(crate) fn new(types: Table, limit: u64) -> Store {
        Store {
            objects: Mutex::new(HashMap::new()),
            leases: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(1),
            types,
            limit,
        }
    }

    /// Answers one request. A panic in the server's own code (a bug)
    /// becomes an error reply, not a dead server.
    pub(crate) fn handle(&self, request: Request, ctx: &Ctx<'_>) -> Reply {
        catch_unwind(AssertUnwindSafe(|| match request {
            Request::One(single) => self.single(single, ctx),
            Request::Batch(all) => Ok(Payload::Batch(
                all.into_iter().map(|s| self.single(s, ctx)).collect(),
            )),
        }))
        .unwrap_or_else(|p| Err(RemoteError::Internal(panic_message(p.as_ref()))))
    }

    fn single(&self, single: Single, ctx: &Ctx<'_>) -> Reply {
        match single {
            Single::Create(kind) => {
                let object = self.make(kind)?;
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                lock(&self.objects).insert(id, (1, Arc::new(object)));
                Ok(Payload::Object(id))
            }
            Single::Call(id, op) => {
                let object = self.get(id)?;
                object.call(op, ctx)
            }
            Single::IncRef(id) => self.add_ref(id),
            Single::Lease(id) => {
                self.add_ref(id)?;
                lock(&self.leases).push_back((Instant::now() + LEASE, id));
                Ok(Payload::Unit)
            }
            Single::DecRef(id) => {
                self.expire_leases();
                self.drop_ref(id)
            }
            Single::Ping => Ok(Payload::Unit),
        }
    }

    fn add_ref(&self, id: ObjectId) -> Reply {
        let mut objects = lock(&self.objects);
        let (refs, _) = objects.get_mut(&id).ok_or(RemoteError::NoSuchObject(id))?;
        *refs += 1;
        Ok(Payload::Unit)
    }

    fn drop_ref(&self, id: ObjectId) -> Reply {
        let freed = {
            let mut objects = lock(&self.objects);
            let (refs, _) = objects.get_mut(&id).ok_or(RemoteError::NoSuchObject(id))?;
            *refs -= 1;
            if *refs == 0 {
                objects.remove(&id)
            } else {
                None
            }
        };
        // Dropped outside the table's lock: a user type's drop may take
        // its time.
        drop(freed);
        Ok(Payload::Unit)
    }

    /// Drops the leases that have expired. Run when references are
    /// dropped: an expired lease only keeps memory a little longer.
    fn expire_leases(&self) {
        let now = Instant::now();
        let expired: Vec<ObjectId> = {
            let mut leases = lock(&self.leases);
            let n = leases.iter().take_while(|(t, _)| *t <= now).count();
            leases.drain(..n).map(|(_, id)| id).collect()
        };
        for id in expired {
            let _ = self.drop_ref(id);
        }
    }

    fn get(&self, id: ObjectId) -> Result<Arc<Object>, RemoteError> {
        lock(&self.objects)
            .get(&id)
            .map(|(_, o)| Arc::clone(o))
            .ok_or(RemoteError::NoSuchObject(id))
    }

    fn make(&self, kind: Kind) -> Result<Object, RemoteError> {
        Ok(match kind {
            Kind::Dict => Object::Dict(Mutex::default()),
            Kind::List => Object::List(Mutex::default()),
            Kind::Namespace => Object::Namespace(Mutex::default()),
            Kind::Queue { max_items } => Object::Queue(QueueObject::new(max_items)),
            Kind::Lock { reentrant } => Object::Lock(LockObject::new(reentrant)),
            Kind::Event => Object::Event(EventObject::default()),
            Kind::Value(v) => Object::Value(Mutex::new(v.0)),
            Kind::Barrier { parties } => Object::Barrier(BarrierObject::new(parties)?),
            Kind::Semaphore { value, bounded } => {
                Object::Semaphore(SemaphoreObject::new(value, bounded))
            }
            Kind::User {
                name,
                type_name,
                init,
            } => {
                let entry = self
                    .types
                    .get(&name)
                    .ok_or_else(|| RemoteError::UnknownType(name.clone()))?;
                if entry.type_name != type_name {
                    return Err(RemoteError::TypeMismatch {
                        name,
                        registered: entry.type_name.into(),
                        asked: type_name,
                    });
                }
                Object::User(Mutex::new((entry.create)(&init.0)?))
            }
        })
    }

    /// Releases the locks acquired through `session`, which has ended.
    pub(crate) fn session_ended(&self, session: u64) {
        self.expire_leases();
        let locks: Vec<Arc<Object>> = lock(&self.objects)
            .values()
            .filter(|(_, o)| matches!(**o, Object::Lock(_)))
            .map(|(_, o)| Arc::clone(o))
            .collect();
        for object in locks {
            if let Object::Lock(l) = &*object {
                l.session_ended(session);
            }
        }
    }
}
