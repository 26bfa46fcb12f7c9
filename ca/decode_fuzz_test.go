package ca

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzParseKEK: decoding a KEK file never panics, and never accepts
// anything but 32 bytes of base64.
func FuzzParseKEK(f *testing.F) {
	f.Add([]byte("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"))
	f.Add([]byte(" not base64 "))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseKEK(b)
		if err == nil && k.ID() == "" {
			t.Fatal("a KEK without an ID")
		}
		if err != nil && bytes.Contains([]byte(err.Error()), bytes.TrimSpace(b)) && len(bytes.TrimSpace(b)) > 8 {
			t.Fatalf("the error %q contains the file's content", err)
		}
	})
}

// FuzzOpenSealedKey: a sealed key from anywhere (a corrupted identity
// file, a forged Raft record) is refused with an error, never a panic,
// and never opens without the KEK it was sealed under.
func FuzzOpenSealedKey(f *testing.F) {
	kek, _ := NewKEK(bytes.Repeat([]byte{7}, KEKSize))
	key, _ := ECDSA.GenerateKey()
	sk, _ := SealKey(kek, ECDSA, "ecdsa/root", key)
	good, _ := jsonMarshal(sk)
	f.Add(good)
	f.Add([]byte(`{"profile":"sm2","label":"x","kek_id":"` + kek.ID() + `","ciphertext":"AAAA"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sk, err := ParseSealedKey(b)
		if err != nil {
			return
		}
		signer, err := sk.Open(kek)
		if err == nil && signer == nil {
			t.Fatal("opened to nothing")
		}
	})
}

// FuzzParseCertificatesPEM: a PEM bundle (trust bundles, attestor CAs)
// never panics the parser, and what it accepts holds certificates only.
func FuzzParseCertificatesPEM(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("text"))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := ParseCertificatesPEM(b)
		if err == nil && len(certs) == 0 {
			t.Fatal("accepted a bundle without certificates")
		}
	})
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
