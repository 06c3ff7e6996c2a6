//! Mutual TLS: a hospital key counts only on a connection whose client
//! certificate belongs to the same hospital, so a leaked key alone cannot
//! submit records.

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The leaf certificate the client presented on the request's connection.
pub fn presented<B>(request: &http::Request<B>) -> Option<CertificateDer<'static>> {
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    info.peer_certs()?.first().cloned()
}

/// Whether `cert` names `hospital_id` as a subjectAltName DNS entry (case-insensitive).
pub fn names_hospital(cert: &CertificateDer<'_>, hospital_id: &str) -> bool {
    let Ok(name) = ServerName::try_from(hospital_id) else {
        // An id that cannot be a DNS name cannot be in a certificate's SAN.
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|leaf| leaf.verify_is_valid_for_subject_name(&name).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_certificate_names_the_hospitals_in_its_san() {
        let cert = cert_for(&["H-DE-001", "h-de-002"]);
        assert!(names_hospital(&cert, "H-DE-001"));
        assert!(names_hospital(&cert, "h-de-001"), "DNS names ignore case");
        assert!(names_hospital(&cert, "H-DE-002"));
        assert!(!names_hospital(&cert, "H-DE-003"));
        assert!(!names_hospital(&cert, "H-DE-00"));
        assert!(!names_hospital(&cert, "not a dns name"));
        assert!(!names_hospital(
            &CertificateDer::from(vec![1, 2, 3]),
            "H-DE-001"
        ));
    }
}
