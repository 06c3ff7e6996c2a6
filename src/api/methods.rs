//! Every gRPC method the server has, by path, read from the compiled
//! descriptor sets: labels come from this table, so a client cannot mint
//! label values, and whether a method's client streams decides which
//! request deadline applies to it.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message;

use crate::wire::pb;

/// One method of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// The fully qualified service name.
    pub service: &'static str,
    /// The method's name.
    pub name: &'static str,
    /// Whether the client sends a stream of messages rather than one.
    pub client_streaming: bool,
}

/// The method at a gRPC `path` (`/package.Service/Method`), if the server has it.
pub fn method(path: &str) -> Option<&'static Method> {
    methods().get(path)
}

fn methods() -> &'static HashMap<String, Method> {
    static KNOWN: OnceLock<HashMap<String, Method>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let sets = [
            pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut known = HashMap::new();
        for set in sets {
            // The sets are compiled in; one that does not decode names nothing.
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let full = format!("{}.{}", file.package(), service.name());
                    let full: &'static str = Box::leak(full.into_boxed_str());
                    for method in &service.method {
                        let name: &'static str = Box::leak(method.name().into());
                        known.insert(
                            format!("/{full}/{name}"),
                            Method {
                                service: full,
                                name,
                                client_streaming: method.client_streaming(),
                            },
                        );
                    }
                }
            }
        }
        known
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_knows_every_method_and_which_clients_stream() {
        let submit = method("/transplant_audit.v1.IngestService/SubmitRecords").expect("known");
        assert_eq!(
            (submit.service, submit.name, submit.client_streaming),
            ("transplant_audit.v1.IngestService", "SubmitRecords", true)
        );
        for unary_request in [
            "/transplant_audit.v1.IngestService/SubmitRecord",
            "/transplant_audit.v1.AuditService/WatchFlags",
            "/transplant_audit.v1.AdminService/Rescan",
            "/grpc.health.v1.Health/Watch",
        ] {
            assert!(!method(unary_request).expect("known").client_streaming);
        }
        assert!(
            method("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
                .expect("known")
                .client_streaming
        );
        assert_eq!(method("/nope.Nope/Nope"), None);
    }
}
