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
use super::pool::PoolObject;
use super::sync::{
    BarrierObject, ConditionObject, EventObject, LockObject, QueueObject, SemaphoreObject,
};
use super::{Ctx, lock};

/// An object the server hosts.
enum Object {
    Dict(Mutex<Dict>),
    List(Mutex<Vec<Vec<u8>>>),
    Array(Mutex<Vec<Vec<u8>>>),
    Namespace(Mutex<BTreeMap<String, Vec<u8>>>),
    Value(Mutex<Vec<u8>>),
    Queue(QueueObject),
    Lock(Arc<LockObject>),
    Condition(ConditionObject),
    Event(EventObject),
    Barrier(BarrierObject),
    Semaphore(SemaphoreObject),
    User(Mutex<Box<dyn HostedObject>>),
    Pool(PoolObject),
}

impl Object {
    /// Whether a session may keep this object in its [`Recent`]: a
    /// collection, whose methods never block and whose drop does nothing
    /// but free memory (so dropping it a little late is unobservable).
    fn is_collection(&self) -> bool {
        matches!(
            self,
            Object::Dict(_)
                | Object::List(_)
                | Object::Array(_)
                | Object::Namespace(_)
                | Object::Value(_)
        )
    }

    fn kind_name(&self) -> &'static str {
        match self {
            Object::Dict(_) => "dict",
            Object::List(_) => "list",
            Object::Array(_) => "array",
            Object::Namespace(_) => "namespace",
            Object::Value(_) => "value",
            Object::Queue(_) => "queue",
            Object::Lock(_) => "lock",
            Object::Condition(_) => "condition",
            Object::Event(_) => "event",
            Object::Barrier(_) => "barrier",
            Object::Semaphore(_) => "semaphore",
            Object::User(_) => "user object",
            Object::Pool(_) => "pool",
        }
    }

    fn call(&self, op: Op, ctx: &Ctx<'_>) -> Reply {
        match (self, op) {
            (Object::Dict(d), Op::Dict(op)) => Dict::call(d, op),
            (Object::List(l), Op::List(op)) => collections::list(l, op),
            (Object::Array(a), Op::Array(op)) => collections::array(a, op),
            (Object::Namespace(n), Op::Namespace(op)) => collections::namespace(n, op),
            (Object::Value(v), Op::Value(op)) => collections::value(v, op),
            (Object::Queue(q), Op::Queue(op)) => q.call(op, ctx),
            (Object::Lock(l), Op::Lock(op)) => l.call(op, ctx),
            (Object::Condition(c), Op::Condition(op)) => c.call(op, ctx),
            (Object::Event(e), Op::Event(op)) => e.call(op, ctx),
            (Object::Barrier(b), Op::Barrier(op)) => b.call(op, ctx),
            (Object::Semaphore(s), Op::Semaphore(op)) => s.call(op, ctx),
            (Object::User(u), Op::User(call)) => {
                lock(u).call(&call.0).map(|r| Payload::Value(Blob(r)))
            }
            (Object::Pool(p), Op::Pool(op)) => p.call(op, ctx),
            (object, op) => Err(RemoteError::NoSuchMethod {
                object: object.kind_name().into(),
                method: op.kind_name().into(),
            }),
        }
    }
}

/// The collection a session called last, as the session thread keeps it:
/// a run of calls on one object then skips the table's lock and the
/// object's reference count, shared by every session thread (with two
/// busy clients their cache lines moved between cores on every call).
///
/// Valid while no object has left the table since it was looked up (the
/// store's count of removals is unchanged; ids are never reused). A
/// session forgets it when it calls anything else, when it goes idle, and
/// when it ends: so a freed collection outlives its last reference only
/// while a busy session still held it, by one call at most.
#[derive(Default)]
pub(crate) struct Recent(Option<(ObjectId, u64, Arc<Object>)>);

impl Recent {
    /// Drops the object held, if any.
    pub(crate) fn forget(&mut self) {
        self.0 = None;
    }
}

/// Every object of the server, with its count of proxies.
pub(crate) struct Store {
    objects: Mutex<HashMap<ObjectId, (u64, Arc<Object>)>>,
    /// Objects removed from `objects` so far (see [`Recent`]).
    removals: AtomicU64,
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
            removals: AtomicU64::new(0),
            leases: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(1),
            types,
            limit,
        }
    }

    /// Answers one request. A panic in the server's own code (a bug)
    /// becomes an error reply, not a dead server.
    /// `recent` is the calling session's [`Recent`].
    pub(crate) fn handle(&self, request: Request, ctx: &Ctx<'_>, recent: &mut Recent) -> Reply {
        catch_unwind(AssertUnwindSafe(|| match request {
            Request::One(single) => self.single(single, ctx, recent),
            Request::Batch(all) => Ok(Payload::Batch(
                all.into_iter()
                    .map(|s| self.single(s, ctx, recent))
                    .collect(),
            )),
        }))
        .unwrap_or_else(|p| Err(RemoteError::Internal(panic_message(p.as_ref()))))
    }

    fn single(&self, single: Single, ctx: &Ctx<'_>, recent: &mut Recent) -> Reply {
        match single {
            Single::Create(kind) => {
                let object = self.make(kind)?;
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                lock(&self.objects).insert(id, (1, Arc::new(object)));
                Ok(Payload::Object(id))
            }
            Single::Call(id, op) => self.call(id, op, ctx, recent),
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

    /// Calls a method of object `id`, through the session's [`Recent`]
    /// when it holds that object.
    fn call(&self, id: ObjectId, op: Op, ctx: &Ctx<'_>, recent: &mut Recent) -> Reply {
        // Read before the lookup: a removal after it changes the count, and
        // the next call looks the object up again.
        let removals = self.removals.load(Ordering::Acquire);
        if let Some((held, seen, object)) = &recent.0
            && *held == id
            && *seen == removals
        {
            return object.call(op, ctx);
        }
        // Not held across a call that may block (or may be slow).
        recent.forget();
        let object = self.get(id)?;
        if object.is_collection() {
            recent.0 = Some((id, removals, Arc::clone(&object)));
        }
        object.call(op, ctx)
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
                // Counted before the reply: every call that starts after
                // the client hears of the drop looks the id up again.
                self.removals.fetch_add(1, Ordering::Release);
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
            Kind::Array(items) => {
                Object::Array(Mutex::new(items.into_iter().map(|b| b.0).collect()))
            }
            Kind::Namespace => Object::Namespace(Mutex::default()),
            Kind::Queue { max_items } => Object::Queue(QueueObject::new(max_items)),
            Kind::JoinableQueue { max_items } => Object::Queue(QueueObject::joinable(max_items)),
            Kind::Lock { reentrant } => Object::Lock(Arc::new(LockObject::new(reentrant))),
            // Python's default lock for a condition is an RLock.
            Kind::Condition { lock: None } => {
                Object::Condition(ConditionObject::new(Arc::new(LockObject::new(true))))
            }
            Kind::Condition { lock: Some(id) } => match &*self.get(id)? {
                Object::Lock(l) => Object::Condition(ConditionObject::new(Arc::clone(l))),
                other => {
                    return Err(RemoteError::BadArgument(format!(
                        "object {id} is a {}, not a lock",
                        other.kind_name()
                    )));
                }
            },
            Kind::Event => Object::Event(EventObject::default()),
            Kind::Value(v) => Object::Value(Mutex::new(v.0)),
            Kind::Barrier { parties } => Object::Barrier(BarrierObject::new(parties)?),
            Kind::Semaphore { value, bounded } => {
                Object::Semaphore(SemaphoreObject::new(value, bounded))
            }
            Kind::Pool(spec) => Object::Pool(PoolObject::new(spec)?),
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

    /// Releases the locks (and conditions' locks) acquired through
    /// `session`, which has ended.
    pub(crate) fn session_ended(&self, session: u64) {
        self.expire_leases();
        let locks: Vec<Arc<Object>> = lock(&self.objects)
            .values()
            .filter(|(_, o)| matches!(**o, Object::Lock(_) | Object::Condition(_)))
            .map(|(_, o)| Arc::clone(o))
            .collect();
        for object in locks {
            match &*object {
                Object::Lock(l) => l.session_ended(session),
                // Its lock may be its own, or one whose proxies are gone.
                Object::Condition(c) => c.lock().session_ended(session),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::protocol::{DictOp, EventOp, QueueOp};
    use super::*;

    fn one(store: &Store, single: Single, recent: &mut Recent) -> Reply {
        let alive = || true;
        let ctx = Ctx {
            session: 1,
            alive: &alive,
        };
        store.handle(Request::One(single), &ctx, recent)
    }

    fn create(store: &Store, kind: Kind) -> ObjectId {
        match one(store, Single::Create(kind), &mut Recent::default()) {
            Ok(Payload::Object(id)) => id,
            other => panic!("create failed: {other:?}"),
        }
    }

    fn len(id: ObjectId) -> Single {
        Single::Call(id, Op::Dict(DictOp::Len))
    }

    #[test]
    fn a_collection_held_by_a_session_is_gone_once_its_last_reference_is() {
        let store = Store::new(Table::default(), u64::MAX);
        let (mut mine, mut other) = (Recent::default(), Recent::default());
        let id = create(&store, Kind::Dict);
        // Both sessions now hold the dict.
        assert!(matches!(
            one(&store, len(id), &mut mine),
            Ok(Payload::Count(0))
        ));
        assert!(matches!(
            one(&store, len(id), &mut other),
            Ok(Payload::Count(0))
        ));
        assert!(mine.0.is_some() && other.0.is_some());
        // The other session drops the last reference: neither reaches it.
        assert!(one(&store, Single::DecRef(id), &mut other).is_ok());
        for recent in [&mut mine, &mut other] {
            assert!(matches!(
                one(&store, len(id), recent),
                Err(RemoteError::NoSuchObject(i)) if i == id
            ));
            assert!(recent.0.is_none());
        }
    }

    #[test]
    fn a_session_holds_no_object_while_it_calls_a_blocking_one() {
        let store = Store::new(Table::default(), u64::MAX);
        let mut recent = Recent::default();
        let dict = create(&store, Kind::Dict);
        let event = create(&store, Kind::Event);
        assert!(one(&store, len(dict), &mut recent).is_ok());
        assert!(recent.0.is_some());
        let is_set = Single::Call(event, Op::Event(EventOp::IsSet));
        assert!(matches!(
            one(&store, is_set, &mut recent),
            Ok(Payload::Bool(false))
        ));
        assert!(recent.0.is_none());
    }

    #[test]
    fn a_plain_queue_has_no_task_done_and_a_condition_needs_a_lock() {
        let store = Store::new(Table::default(), u64::MAX);
        let mut recent = Recent::default();
        let queue = create(&store, Kind::Queue { max_items: 0 });
        for op in [QueueOp::TaskDone, QueueOp::Join(Some(0))] {
            assert!(matches!(
                one(&store, Single::Call(queue, Op::Queue(op)), &mut recent),
                Err(RemoteError::NoSuchMethod { .. })
            ));
        }
        let dict = create(&store, Kind::Dict);
        let made = one(
            &store,
            Single::Create(Kind::Condition { lock: Some(dict) }),
            &mut recent,
        );
        assert!(matches!(made, Err(RemoteError::BadArgument(_))), "{made:?}");
        let made = one(
            &store,
            Single::Create(Kind::Condition { lock: Some(999) }),
            &mut recent,
        );
        assert!(
            matches!(made, Err(RemoteError::NoSuchObject(999))),
            "{made:?}"
        );
        let lock = create(&store, Kind::Lock { reentrant: false });
        create(&store, Kind::Condition { lock: Some(lock) });
    }
}
