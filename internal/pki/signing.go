package pki

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// SigningKeyFile is the control plane's Ed25519 task-signing key.
const SigningKeyFile = "task-signing.key"

// SigningKey is an Ed25519 key that signs remediation tasks.
type SigningKey struct {
	ID   string
	Priv ed25519.PrivateKey
	Pub  ed25519.PublicKey
}

// KeyID is the first 16 hex characters of the SHA-256 of a public key.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

// LoadOrCreateSigningKey loads the key from path or creates it (mode 0600).
func LoadOrCreateSigningKey(path string) (*SigningKey, bool, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		block, _ := pem.Decode(b)
		if block == nil {
			return nil, false, fmt.Errorf("signing key %s: no PEM block", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, false, fmt.Errorf("signing key %s: %w", path, err)
		}
		priv, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, false, fmt.Errorf("signing key %s: want Ed25519, got %T", path, k)
		}
		pub := priv.Public().(ed25519.PublicKey)
		return &SigningKey{ID: KeyID(pub), Priv: priv, Pub: pub}, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, err
	}
	pemBytes, err := EncodeKeyPEM(priv)
	if err != nil {
		return nil, false, err
	}
	if err := WriteFileAtomic(path, pemBytes, 0o600); err != nil {
		return nil, false, err
	}
	return &SigningKey{ID: KeyID(pub), Priv: priv, Pub: pub}, true, nil
}
