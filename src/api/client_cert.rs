//! Mutual TLS: a hospital key counts only on a connection whose client
//! certificate belongs to the same hospital, so a leaked key alone cannot
//! submit records.

use crate::domain::HospitalId;
use crate::incoming::ConnectionInfo;
use rustls_pki_types::CertificateDer;

/// The leaf certificate the client presented on the request's connection.
pub fn presented<B>(request: &http::Request<B>) -> Option<CertificateDer<'static>> {
    let info = request.extensions().get::<ConnectionInfo>()?;
    info.peer_certificates.as_ref()?.first().cloned()
}

/// Whether `cert` names `hospital` as a subjectAltName DNS entry, compared
/// in the hospital id's normal form (as keys and records are), not by DNS
/// matching: a wildcard name binds no hospital but one spelled as it.
pub fn names_hospital(cert: &CertificateDer<'_>, hospital: &HospitalId) -> bool {
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|leaf| leaf.valid_dns_names().any(|name| hospital.is(name)))
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
    fn a_certificate_names_the_hospitals_in_its_san_in_their_normal_form() {
        let cert = cert_for(&["H-DE-001", "h-de-002", "*.example.org"]);
        let names = |id: &str| names_hospital(&cert, &HospitalId::normalize(id));
        assert!(names("H-DE-001"));
        assert!(names("h-de-001"), "case is not part of a hospital id");
        assert!(names(" H-DE-002 "), "nor is surrounding whitespace");
        assert!(!names("H-DE-003"));
        assert!(!names("H-DE-00"));
        assert!(!names("not a dns name"));
        assert!(!names("h.example.org"), "no wildcard matching");
        assert!(!names_hospital(
            &CertificateDer::from(vec![1, 2, 3]),
            &HospitalId::normalize("H-DE-001")
        ));
    }
}
