//! Aggregates: state per call site in the current aggregate context (per GROUP BY bin, or
//! per query); without GROUP BY they count rows as they are evaluated, after WHERE.

use futures::future::BoxFuture;

use crate::eval::engine::Place;
use crate::eval::registry::{Call, Registry};
use crate::eval::value::{self, Value};

pub(super) fn register(r: &mut Registry) {
    r.function("count", Place::Both, count);
    r.function("sum", Place::Both, sum);
    r.function("min", Place::Both, min);
    r.function("max", Place::Both, max);
    r.function("enumerate", Place::Both, enumerate);
}

fn update(c: &Call<'_>, f: impl FnOnce(Option<Value>) -> Value) -> Value {
    let mut state = c.scope.agg().lock().expect("aggregate state");
    let prev = state.remove(&c.site);
    let next = f(prev);
    state.insert(c.site, next.clone());
    next
}

fn count<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let _ = c.args.all().await;
        update(&c, |p| match p {
            Some(Value::Int(n)) => Value::Int(n + 1),
            _ => Value::Int(1),
        })
    })
}

fn sum<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let item = c.args.get("item").await.unwrap_or_default();
        update(&c, |p| match p {
            Some(prev) => value::add(&prev, &item),
            None => value::add(&Value::Int(0), &item),
        })
    })
}

fn min<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let item = c.args.get("item").await.unwrap_or_default();
        update(&c, |p| match p {
            Some(prev) if !value::less(&item, &prev) => prev,
            _ => item,
        })
    })
}

fn max<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let item = c.args.get("item").await.unwrap_or_default();
        update(&c, |p| match p {
            Some(prev) if !value::less(&prev, &item) => prev,
            _ => item,
        })
    })
}

fn enumerate<'a>(mut c: Call<'a>) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        let item = c.args.get("items").await.unwrap_or_default();
        update(&c, |p| match p {
            Some(Value::List(mut l)) => {
                l.push(item);
                Value::List(l)
            }
            _ => Value::List(vec![item]),
        })
    })
}
