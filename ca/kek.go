package ca

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// KEKSize is the size of a key-encryption key: AES-256.
const KEKSize = 32

// KEK is a key-encryption key. Private keys are sealed under it at rest with
// AES-256-GCM. It never appears in logs or error messages; ID is a
// fingerprint safe to show.
type KEK struct {
	aead cipher.AEAD
	id   string
}

// NewKEK makes a KEK from 32 key bytes.
func NewKEK(key []byte) (*KEK, error) {
	if len(key) != KEKSize {
		return nil, fmt.Errorf("ca: key-encryption key must be %d bytes, got %d", KEKSize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key: %w", err)
	}
	h := sha256.Sum256(append([]byte("meshca kek id\x00"), key...))
	return &KEK{aead: aead, id: hex.EncodeToString(h[:8])}, nil
}

// ID is a public fingerprint of the KEK, recorded beside sealed keys so that
// a wrong KEK is named as such.
func (k *KEK) ID() string { return k.id }

// LoadKEKFile reads a KEK file: 32 random bytes, base64-encoded (standard
// encoding, surrounding whitespace ignored). The file must not be readable or
// writable by group or others.
func LoadKEKFile(path string) (*KEK, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("ca: key-encryption key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; it must be readable by its owner only (chmod 600 %s)", ErrKEKPermissions, path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key file: %w", err)
	}
	defer clear(b)
	kek, err := ParseKEK(b)
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key file %s must hold %d random bytes in base64; if keys were sealed under it, only its original content opens them (restore it from a backup); a new KEK for new data goes in a new file: (umask 077; head -c 32 /dev/urandom | base64 > new-kek)", path, KEKSize)
	}
	return kek, nil
}

// maxKEKFileSize bounds what ParseKEK reads: a KEK file is 45 bytes.
const maxKEKFileSize = 4 << 10

// ParseKEK decodes the content of a KEK file: 32 bytes in standard base64,
// surrounding whitespace ignored. Errors never contain the content.
func ParseKEK(b []byte) (*KEK, error) {
	if len(b) > maxKEKFileSize {
		return nil, fmt.Errorf("ca: key-encryption key: %d bytes, not a KEK file", len(b))
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != KEKSize {
		clear(key)
		return nil, fmt.Errorf("ca: key-encryption key: want %d bytes in base64", KEKSize)
	}
	defer clear(key)
	return NewKEK(key)
}

// ParseSealedKey decodes a sealed key from its JSON form, refusing unknown
// fields; Open then checks and decrypts it.
func ParseSealedKey(b []byte) (*SealedKey, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var sk SealedKey
	if err := dec.Decode(&sk); err != nil {
		return nil, fmt.Errorf("ca: sealed key: %w", err)
	}
	if dec.More() {
		return nil, errors.New("ca: sealed key: data after the JSON object")
	}
	return &sk, nil
}

// CreateKEKFile writes a new random KEK to path with mode 0600 and returns it.
// It refuses to overwrite an existing file.
func CreateKEKFile(path string) (*KEK, error) {
	key := make([]byte, KEKSize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("ca: generate key-encryption key: %w", err)
	}
	enc := []byte(base64.StdEncoding.EncodeToString(key) + "\n")
	defer clear(enc)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("ca: key-encryption key file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key file: %w", err)
	}
	if _, err := f.Write(enc); err != nil {
		f.Close()
		return nil, fmt.Errorf("ca: key-encryption key file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("ca: key-encryption key file: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("ca: key-encryption key file: %w", err)
	}
	return NewKEK(key)
}

// LoadOrCreateKEKFile loads path, creating it first when it does not exist.
// created reports whether it did.
func LoadOrCreateKEKFile(path string) (kek *KEK, created bool, err error) {
	kek, err = LoadKEKFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		kek, err = CreateKEKFile(path)
		return kek, err == nil, err
	}
	return kek, false, err
}

// SealedKey is a private key encrypted under a KEK with AES-256-GCM. The
// associated data binds it to its profile and label, so a sealed key cannot
// be swapped for another without detection.
type SealedKey struct {
	Profile string `json:"profile"`
	// Label names the key's purpose, e.g. "ecdsa/root".
	Label string `json:"label"`
	// KEKID is the ID of the KEK it is sealed under.
	KEKID string `json:"kek_id"`
	// Ciphertext is nonce || AES-256-GCM(PKCS#8 DER).
	Ciphertext []byte `json:"ciphertext"`
}

func sealAAD(profile, label string) []byte {
	return []byte("meshca sealed key v1\x00" + profile + "\x00" + label)
}

// SealKey encrypts key (a private key of profile p) under kek.
func SealKey(kek *KEK, p Profile, label string, key crypto.Signer) (*SealedKey, error) {
	der, err := p.MarshalPrivateKey(key)
	if err != nil {
		return nil, err
	}
	defer clear(der)
	nonce := make([]byte, kek.aead.NonceSize(), kek.aead.NonceSize()+len(der)+kek.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("ca: seal key: %w", err)
	}
	ct := kek.aead.Seal(nonce, nonce, der, sealAAD(p.Name(), label))
	return &SealedKey{Profile: p.Name(), Label: label, KEKID: kek.ID(), Ciphertext: ct}, nil
}

// Open decrypts the sealed key. A KEK other than the one it was sealed with
// gives ErrWrongKEK.
func (s *SealedKey) Open(kek *KEK) (crypto.Signer, error) {
	p, err := ProfileByName(s.Profile)
	if err != nil {
		return nil, err
	}
	if s.KEKID != kek.ID() {
		return nil, fmt.Errorf("%w: key %q is sealed under KEK %s, the given KEK is %s", ErrWrongKEK, s.Label, s.KEKID, kek.ID())
	}
	ns := kek.aead.NonceSize()
	if len(s.Ciphertext) < ns+kek.aead.Overhead() {
		return nil, fmt.Errorf("ca: sealed key %q is truncated", s.Label)
	}
	der, err := kek.aead.Open(nil, s.Ciphertext[:ns], s.Ciphertext[ns:], sealAAD(s.Profile, s.Label))
	if err != nil {
		return nil, fmt.Errorf("%w: key %q does not decrypt (wrong KEK or corrupted data)", ErrWrongKEK, s.Label)
	}
	defer clear(der)
	return p.parseKey(der)
}
