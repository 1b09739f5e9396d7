package server

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"tend.dev/tend/internal/pki"
)

// TLS 1.3 session resumption (docs/BENCHMARKS.md, T8): agents keep the
// session tickets the control plane gives them and resume with them after a
// reconnect, which skips the certificate signature and verification of a
// full handshake. The keys that encrypt the tickets are kept in the data dir
// so that tickets outlive a restart. A resumed session carries the client
// certificate chain of its full handshake: crypto/tls refuses to resume one
// whose certificate expired, and the per-call authorizer checks expiry and
// revocation on every call as for a full handshake.
const (
	TicketKeysFile = "tls-ticket-keys.json"
	// ticketKeyRotate: a new key encrypts new tickets this often.
	ticketKeyRotate = 4 * time.Hour
	// ticketKeyKeep: tickets encrypted with a key are accepted this long
	// after it was made (then the agent makes a full handshake).
	ticketKeyKeep = 24 * time.Hour
	maxTicketKeys = int(ticketKeyKeep/ticketKeyRotate) + 2
)

type ticketKey struct {
	Created time.Time `json:"created"`
	Key     []byte    `json:"key"`
}

// ticketKeys is the session-ticket key set in DATA_DIR/tls-ticket-keys.json
// (0600), newest first, and the TLS config that uses it.
type ticketKeys struct {
	path string
	base *tls.Config // the server's config, without ticket keys
	mu   sync.Mutex
	keys []ticketKey
	conf atomic.Pointer[tls.Config]
}

// openTicketKeys loads the keys (dropping expired ones), adds a fresh one
// when the newest is due for rotation, saves them and builds the config.
func openTicketKeys(dir string, base *tls.Config, now time.Time) (*ticketKeys, error) {
	t := &ticketKeys{path: filepath.Join(dir, TicketKeysFile), base: base}
	b, err := os.ReadFile(t.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("session ticket keys: %w", err)
	default:
		if err := json.Unmarshal(b, &t.keys); err != nil {
			return nil, fmt.Errorf("session ticket keys %s: not a JSON list of {created, key}: %w (remove it: agents then make one full TLS handshake)", t.path, err)
		}
		for i, k := range t.keys {
			if len(k.Key) != 32 || k.Created.IsZero() {
				return nil, fmt.Errorf("session ticket keys %s: entry %d: want a 32-byte key and its creation time (remove the file: agents then make one full TLS handshake)", t.path, i)
			}
		}
	}
	if _, err := t.rotate(now, true); err != nil {
		return nil, err
	}
	return t, nil
}

// rotate drops keys past ticketKeyKeep and adds a new one if the newest is
// ticketKeyRotate old; it saves and applies the set if it changed (or if
// force).
func (t *ticketKeys) rotate(now time.Time, force bool) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	keep := t.keys[:0:0]
	for _, k := range t.keys {
		if now.Sub(k.Created) < ticketKeyKeep && !k.Created.After(now.Add(time.Hour)) {
			keep = append(keep, k)
		}
	}
	changed := len(keep) != len(t.keys)
	if len(keep) == 0 || now.Sub(keep[0].Created) >= ticketKeyRotate {
		k := ticketKey{Created: now.UTC(), Key: make([]byte, 32)}
		if _, err := rand.Read(k.Key); err != nil {
			return false, err
		}
		keep = append([]ticketKey{k}, keep...)
		changed = true
	}
	if len(keep) > maxTicketKeys {
		keep = keep[:maxTicketKeys]
	}
	if !changed && !force {
		return false, nil
	}
	if changed {
		b, err := json.MarshalIndent(keep, "", "  ")
		if err != nil {
			return false, err
		}
		if err := pki.WriteFileAtomic(t.path, b, 0o600); err != nil {
			return false, fmt.Errorf("save session ticket keys: %w", err)
		}
	} else if err := os.Chmod(t.path, 0o600); err != nil {
		return false, fmt.Errorf("session ticket keys: %w", err)
	}
	t.keys = keep
	conf := t.base.Clone()
	ks := make([][32]byte, len(keep))
	for i, k := range keep {
		copy(ks[i][:], k.Key)
	}
	// The first key encrypts new tickets; all of them decrypt.
	conf.SetSessionTicketKeys(ks)
	t.conf.Store(conf)
	return changed, nil
}

// config is for tls.Config.GetConfigForClient: the config with the current
// keys (gRPC clones the config it is given, so keys set later on it would
// not reach its handshakes).
func (t *ticketKeys) config(*tls.ClientHelloInfo) (*tls.Config, error) {
	return t.conf.Load(), nil
}
