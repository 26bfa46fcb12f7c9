package attest

// Kind classifies an attestation failure.
type Kind int

// The kinds of attestation failure.
const (
	// KindInvalidEvidence: the evidence is malformed (bad JSON, a field
	// missing or out of bounds, a certificate that does not parse).
	KindInvalidEvidence Kind = iota + 1
	// KindNotAuthorized: the evidence is well formed but refused (bad
	// signature, unknown CA or key, expired, wrong audience, token already
	// used, no pod for a process...).
	KindNotAuthorized
	// KindUnavailable: something attestation depends on could not be
	// reached (the kubelet, the agent during a challenge, the Raft log).
	// Retrying later may succeed.
	KindUnavailable
	// KindProcessChanged: the process being attested exited, or its PID was
	// reused by another process, while it was attested. Its selectors would
	// describe the wrong process, so none are returned.
	KindProcessChanged
	// KindInvalidSelector: a selector string is malformed.
	KindInvalidSelector
)

// String returns the kind in words, as it appears in error messages.
func (k Kind) String() string {
	switch k {
	case KindInvalidEvidence:
		return "invalid evidence"
	case KindNotAuthorized:
		return "not authorized"
	case KindUnavailable:
		return "unavailable"
	case KindProcessChanged:
		return "process changed"
	case KindInvalidSelector:
		return "invalid selector"
	}
	return "unknown error"
}

// Error is an attestation failure. Match its kind with errors.Is against
// ErrInvalidEvidence, ErrNotAuthorized, ErrUnavailable, ErrProcessChanged
// or ErrInvalidSelector, or read it with errors.As.
type Error struct {
	Kind Kind
	// Attestor names the method that failed ("x509pop", "unix", ...), or
	// is empty.
	Attestor string
	// Msg says what is wrong, in words meant for the requester and the
	// audit log. It never contains a secret (token, key).
	Msg string
	// Err is the underlying cause, if any.
	Err error
}

// Error returns "attest: <attestor>: <kind>: <msg>: <cause>".
func (e *Error) Error() string {
	s := "attest: "
	if e.Attestor != "" {
		s += e.Attestor + ": "
	}
	s += e.Kind.String()
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error of the same Kind, so that
// errors.Is(err, attest.ErrNotAuthorized) holds for every refusal whatever
// its message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind
}

// Sentinels for errors.Is, one per Kind.
var (
	ErrInvalidEvidence = &Error{Kind: KindInvalidEvidence}
	ErrNotAuthorized   = &Error{Kind: KindNotAuthorized}
	ErrUnavailable     = &Error{Kind: KindUnavailable}
	ErrProcessChanged  = &Error{Kind: KindProcessChanged}
	ErrInvalidSelector = &Error{Kind: KindInvalidSelector}
)

// NewError returns an *Error. msg must not contain secrets; neither may
// the message of cause.
func NewError(kind Kind, attestor, msg string, cause error) *Error {
	return &Error{Kind: kind, Attestor: attestor, Msg: msg, Err: cause}
}
