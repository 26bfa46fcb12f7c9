package ca

import "errors"

// Reason classifies why an issuance request was refused.
type Reason string

// The reasons a request can be refused. They are stable strings, suitable for
// metrics labels and API error details.
const (
	ReasonMalformedCSR        Reason = "malformed_csr"
	ReasonCSRTooLarge         Reason = "csr_too_large"
	ReasonCSRSignature        Reason = "bad_csr_signature"
	ReasonKeyType             Reason = "wrong_key_type"
	ReasonTooManyURISANs      Reason = "too_many_uri_sans"
	ReasonInvalidSPIFFEID     Reason = "invalid_spiffe_id"
	ReasonTrustDomainMismatch Reason = "trust_domain_mismatch"
	ReasonInvalidDNSName      Reason = "invalid_dns_name"
	ReasonInvalidTTL          Reason = "invalid_ttl"
	ReasonAuthorityExpired    Reason = "authority_expired"
)

// RequestError is returned when a request is refused because of its content.
// Nothing is issued or stored when a RequestError is returned. Match a reason
// with errors.Is against the Err* values, or read Reason via errors.As.
type RequestError struct {
	Reason Reason
	// Detail says what exactly is wrong, in words meant for the requester.
	// It never contains key material.
	Detail string
	// Err is the underlying parser or crypto error, if any.
	Err error
}

func (e *RequestError) Error() string {
	msg := "ca: " + string(e.Reason)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the underlying error.
func (e *RequestError) Unwrap() error { return e.Err }

// Is reports whether target is a RequestError with the same Reason, so that
// errors.Is(err, ca.ErrKeyType) works whatever the detail.
func (e *RequestError) Is(target error) bool {
	t, ok := target.(*RequestError)
	return ok && t.Reason == e.Reason
}

// Sentinels for errors.Is.
var (
	ErrMalformedCSR        = &RequestError{Reason: ReasonMalformedCSR}
	ErrCSRTooLarge         = &RequestError{Reason: ReasonCSRTooLarge}
	ErrCSRSignature        = &RequestError{Reason: ReasonCSRSignature}
	ErrKeyType             = &RequestError{Reason: ReasonKeyType}
	ErrTooManyURISANs      = &RequestError{Reason: ReasonTooManyURISANs}
	ErrInvalidSPIFFEID     = &RequestError{Reason: ReasonInvalidSPIFFEID}
	ErrTrustDomainMismatch = &RequestError{Reason: ReasonTrustDomainMismatch}
	ErrInvalidDNSName      = &RequestError{Reason: ReasonInvalidDNSName}
	ErrInvalidTTL          = &RequestError{Reason: ReasonInvalidTTL}
	ErrAuthorityExpired    = &RequestError{Reason: ReasonAuthorityExpired}
)

func reqErr(r Reason, detail string, err error) error {
	return &RequestError{Reason: r, Detail: detail, Err: err}
}

// Key custody errors.
var (
	// ErrWrongKEK means sealed keys cannot be opened with the given
	// key-encryption key: it is not the one they were sealed with.
	ErrWrongKEK = errors.New("ca: wrong key-encryption key")
	// ErrKEKPermissions means the KEK file is readable by others than its owner.
	ErrKEKPermissions = errors.New("ca: key-encryption key file permissions too open")
	// ErrUnknownProfile means a profile name is neither "ecdsa" nor "sm2".
	ErrUnknownProfile = errors.New("ca: unknown profile")
)

// ErrNoECDSACAService means that an ECDSA CA was to be created or
// certified in a program that does not link the ECDSA CA service: import
// package github.com/meshca/meshca/ca/stepcas (servers and the meshca
// command do; the node agent, which never creates a CA, does not).
var ErrNoECDSACAService = errors.New("ca: no ECDSA CA service: the ECDSA hierarchy is created through package github.com/meshca/meshca/ca/stepcas, which this program does not import")
