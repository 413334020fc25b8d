//! Pod, Service and EndpointSlice documents: Kubernetes' own kinds, whose
//! schema the API server owns. Only the fields weft reads must have their
//! shape; a missing part is read as empty.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::de::{FieldError, child_path, from_value};
use super::pod::Pod;
use super::service::{EndpointSlice, Service};
use super::types::{Kind, Meta, Object};

pub(super) fn read(
    kind: Kind,
    map: &Map<String, Value>,
    base: &str,
    meta: Meta,
) -> Result<Object, FieldError> {
    let spec_path = child_path(base, "spec");
    Ok(match kind {
        Kind::Pod => Object::Pod(Pod {
            meta,
            spec: part(map.get("spec"), &spec_path)?,
            status: part(map.get("status"), &child_path(base, "status"))?,
        }),
        Kind::Service => Object::Service(Service {
            meta,
            spec: part(map.get("spec"), &spec_path)?,
        }),
        // An EndpointSlice's fields sit beside its metadata.
        _ => Object::EndpointSlice(EndpointSlice {
            meta,
            body: part(Some(&Value::Object(map.clone())), base)?,
        }),
    })
}

fn part<T: DeserializeOwned>(value: Option<&Value>, path: &str) -> Result<T, FieldError> {
    match value {
        None | Some(Value::Null) => from_value(&Value::Object(Map::new()), path),
        Some(v) => from_value(v, path),
    }
}
