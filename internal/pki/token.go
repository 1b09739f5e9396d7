package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"regexp"
	"strings"
)

// A join token is "<id>.<secret>.<pin>": a 6-character id, a 16-character
// secret (both [a-z0-9], as kubeadm's bootstrap tokens) and the hex SHA-256
// of the CA's public key. The agent uses the pin to trust the control plane
// on its first connection, and sends "<id>.<secret>" to enroll.

var (
	tokenIDRe     = regexp.MustCompile(`^[a-z0-9]{6}$`)
	tokenSecretRe = regexp.MustCompile(`^[a-z0-9]{16}$`)
	pinHexRe      = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

const tokenAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

func randomString(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	// 256 % 36 != 0: reject bytes above the largest multiple to stay uniform.
	out := make([]byte, 0, n)
	for len(out) < n {
		for _, c := range b {
			if c < 252 && len(out) < n {
				out = append(out, tokenAlphabet[int(c)%36])
			}
		}
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
	}
	return string(out), nil
}

// NewJoinToken returns a fresh token id and secret.
func NewJoinToken() (id, secret string, err error) {
	if id, err = randomString(6); err != nil {
		return "", "", err
	}
	if secret, err = randomString(16); err != nil {
		return "", "", err
	}
	return id, secret, nil
}

// HashSecret is what the store keeps of a token's secret.
func HashSecret(secret string) []byte {
	s := sha256.Sum256([]byte(secret))
	return s[:]
}

// FormatToken joins id, secret and the CA pin ("sha256:<hex>") into the
// one string an operator passes to --token.
func FormatToken(id, secret, pin string) string {
	return id + "." + secret + "." + strings.TrimPrefix(pin, "sha256:")
}

// ParseToken splits a token into its id, secret and pin ("sha256:<hex>").
// The pin part is required: without it the agent could not know it talks
// to the right control plane.
func ParseToken(s string) (id, secret, pin string, err error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 3 {
		return "", "", "", fmt.Errorf("join token must look like <id>.<secret>.<ca-pin> (3 parts separated by '.'), got %d part(s): create one with 'tendctl token create'", len(parts))
	}
	id, secret, pinHex := parts[0], parts[1], strings.TrimPrefix(parts[2], "sha256:")
	switch {
	case !tokenIDRe.MatchString(id):
		// The id is not echoed: a token pasted in the wrong order would
		// put its secret here.
		return "", "", "", fmt.Errorf("join token id must be 6 characters [a-z0-9], got %d byte(s)", len(id))
	case !tokenSecretRe.MatchString(secret):
		return "", "", "", fmt.Errorf("join token secret must be 16 characters [a-z0-9]")
	case !pinHexRe.MatchString(pinHex):
		return "", "", "", fmt.Errorf("join token CA pin must be 64 lowercase hex characters (the SHA-256 of the CA public key)")
	}
	return id, secret, "sha256:" + pinHex, nil
}

// SplitIDSecret parses "<id>.<secret>" as sent in an EnrollRequest.
func SplitIDSecret(s string) (id, secret string, err error) {
	parts := strings.Split(s, ".")
	if len(parts) != 2 || !tokenIDRe.MatchString(parts[0]) || !tokenSecretRe.MatchString(parts[1]) {
		return "", "", fmt.Errorf("malformed join token: want <id>.<secret>")
	}
	return parts[0], parts[1], nil
}
