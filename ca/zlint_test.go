package ca

import (
	"sort"
	"strings"
	"testing"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// cabfLintsThatFire are the CA/Browser Forum lints that fire on meshca's
// ECDSA hierarchy, with why each does not apply to a private workload PKI.
// README.md lists them; this test fails if the set changes, so the list stays true.
var cabfLintsThatFire = map[string]string{
	"e_ca_country_name_missing":                                     "a private CA for one trust domain has no jurisdiction to name; Country is a web PKI identity-validation field",
	"e_dnsname_not_valid_tld":                                       "workload DNS SANs are cluster-internal names (e.g. *.svc) that are not public TLDs",
	"e_ext_san_uniform_resource_identifier_present":                 "the URI SAN is the SPIFFE ID: X509-SVIDs are defined by it",
	"e_invalid_ca_certificate_policies":                             "certificate policies identify public web PKI validation levels; a workload CA asserts none",
	"e_sub_ca_certificate_policies_missing":                         "as above: no CA/B Forum policy OID applies to a private workload CA",
	"e_sub_ca_crl_distribution_points_missing":                      "CRLs reach relying parties over SDS and the Sync stream, not by URL",
	"e_sub_cert_aia_missing":                                        "relying parties get intermediates with the SVID and the trust bundle over the Workload API/SDS; there is no AIA/OCSP service",
	"e_sub_cert_cert_policy_empty":                                  "no certificate policy applies to a workload identity",
	"e_sub_cert_certificate_policies_missing":                       "no certificate policy applies to a workload identity",
	"w_ext_subject_key_identifier_not_recommended_subscriber":       "the SKI is kept on leaves: the issue asks for SKI/AKI, and SPIRE and istiod leaves carry it",
	"w_root_ca_basic_constraints_path_len_constraint_field_present": "the root limits the hierarchy to one level of intermediates on purpose (path length 1)",
	"w_sub_ca_aia_missing":                                          "no AIA/OCSP service: the chain travels with the SVID",
	"w_sub_cert_aia_does_not_contain_issuing_ca_url":                "no AIA/OCSP service: the chain travels with the SVID",
}

func TestZlint(t *testing.T) {
	l := newLocal(t, "example.org")
	svid, _ := issue(t, l, ProfileECDSA, "spiffe://example.org/ns/default/sa/web", "web.default.svc")
	root, _ := l.Root(ProfileECDSA)
	certs := map[string][]byte{
		"root":         root.Certificate().Raw,
		"intermediate": svid.Certificates[1],
		"leaf":         svid.Certificates[0],
	}
	strict, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: lint.SourceList{lint.RFC5280, lint.RFC5480, lint.Community}})
	if err != nil {
		t.Fatal(err)
	}
	cabf, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: lint.SourceList{lint.CABFBaselineRequirements}})
	if err != nil {
		t.Fatal(err)
	}
	if len(strict.Names()) < 100 {
		t.Fatalf("only %d RFC/community lints registered; the filter is wrong", len(strict.Names()))
	}
	fired := map[string]bool{}
	for name, der := range certs {
		zc, err := zx509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("%s: zcrypto cannot parse: %v", name, err)
		}
		for lintName, r := range zlint.LintCertificateEx(zc, strict).Results {
			if r.Status == lint.Error || r.Status == lint.Warn || r.Status == lint.Fatal {
				t.Errorf("%s: %s: %s %s", name, lintName, r.Status, r.Details)
			}
		}
		for lintName, r := range zlint.LintCertificateEx(zc, cabf).Results {
			if r.Status == lint.Error || r.Status == lint.Warn || r.Status == lint.Fatal {
				fired[lintName] = true
				t.Logf("CA/B Forum lint on %s: %s (%s) %s", name, lintName, r.Status, r.Details)
			}
		}
	}
	var unexplained, stale []string
	for n := range fired {
		if _, ok := cabfLintsThatFire[n]; !ok {
			unexplained = append(unexplained, n)
		}
	}
	for n := range cabfLintsThatFire {
		if !fired[n] {
			stale = append(stale, n)
		}
	}
	sort.Strings(unexplained)
	sort.Strings(stale)
	if len(unexplained) > 0 {
		t.Errorf("CA/B Forum lints fire that cabfLintsThatFire and README.md do not explain: %s", strings.Join(unexplained, ", "))
	}
	if len(stale) > 0 {
		t.Errorf("cabfLintsThatFire lists lints that no longer fire: %s", strings.Join(stale, ", "))
	}
}
