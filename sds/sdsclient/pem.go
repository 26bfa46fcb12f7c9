package sdsclient

import (
	"fmt"
	"strings"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
)

// File is one file to write for a secret.
type File struct {
	// Name is relative, made from the secret's name (see Files).
	Name string
	Data []byte
	// Secret is true for private keys: write them 0600.
	Secret bool
}

// Files turns a secret into PEM files, the way `meshca sds fetch` writes
// them, named after a file-name-safe form of the secret's name:
// <name>.cert.pem (chain, leaf first) and <name>.key.pem (PKCS#8) for a
// tls_certificate; <name>.bundle.pem (trusted_ca) and <name>.crl.pem for a
// validation context; <name>.<trust domain>.bundle.pem for each trust
// domain of a SPIFFE validator; <name>.secret for a generic_secret.
func Files(sec *tlsv3.Secret) ([]File, error) {
	base := FileName(sec.GetName())
	var out []File
	add := func(suffix string, b []byte, secret bool) {
		if len(b) > 0 {
			out = append(out, File{Name: base + suffix, Data: b, Secret: secret})
		}
	}
	switch t := sec.GetType().(type) {
	case *tlsv3.Secret_TlsCertificate:
		add(".cert.pem", t.TlsCertificate.GetCertificateChain().GetInlineBytes(), false)
		add(".key.pem", t.TlsCertificate.GetPrivateKey().GetInlineBytes(), true)
	case *tlsv3.Secret_ValidationContext:
		vc := t.ValidationContext
		add(".bundle.pem", vc.GetTrustedCa().GetInlineBytes(), false)
		add(".crl.pem", vc.GetCrl().GetInlineBytes(), false)
		if cv := vc.GetCustomValidatorConfig(); cv != nil {
			cfg := &tlsv3.SPIFFECertValidatorConfig{}
			if err := cv.GetTypedConfig().UnmarshalTo(cfg); err != nil {
				return nil, fmt.Errorf("sdsclient: %s: custom validator %s: %w", sec.GetName(), cv.GetName(), err)
			}
			for _, td := range cfg.GetTrustDomains() {
				add("."+FileName(td.GetName())+".bundle.pem", td.GetTrustBundle().GetInlineBytes(), false)
			}
		}
	case *tlsv3.Secret_GenericSecret:
		add(".secret", t.GenericSecret.GetSecret().GetInlineBytes(), true)
	default:
		return nil, fmt.Errorf("sdsclient: secret %q of type %T has no file form", sec.GetName(), t)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("sdsclient: secret %q has no inline content", sec.GetName())
	}
	return out, nil
}

// FileName makes a resource name safe as a file name: "spiffe://td/a/b~sm2"
// becomes "spiffe_td_a_b~sm2"; letters, digits, '.', '-', '_' and '~' are
// kept, everything else becomes '_'.
func FileName(name string) string {
	if rest, ok := strings.CutPrefix(name, "spiffe://"); ok {
		name = "spiffe_" + rest
	}
	b := []byte(name)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-', c == '_', c == '~':
		default:
			b[i] = '_'
		}
	}
	if len(b) == 0 || b[0] == '.' {
		return "_" + string(b)
	}
	return string(b)
}

func statusProto(err error) *status.Status {
	return &status.Status{Code: int32(code.Code_INVALID_ARGUMENT), Message: err.Error()}
}
