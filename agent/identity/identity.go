// Package identity is the agent's enrolled identity: its key and
// certificate, the control plane's CA and the pinned task-signing keys, kept
// in the agent's data dir. It enrolls with a join token on first start and
// renews the certificate before it expires.
package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"tend.dev/tend/internal/pki"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Files in the agent's data dir.
const (
	CredFile = "agent.pem" // certificate and private key, 0600
	CAFile   = "ca.crt"
	MetaFile = "identity.json"
)

// ErrNotEnrolled means the data dir holds no identity yet.
var ErrNotEnrolled = errors.New("agent is not enrolled")

type meta struct {
	AgentID     string                `json:"agentId"`
	Name        string                `json:"name"`
	Server      string                `json:"server"`
	SigningKeys []*agentv1.SigningKey `json:"signingKeys"`
}

// Identity is the agent's credentials. Safe for concurrent use.
type Identity struct {
	dir string
	mu  sync.RWMutex
	// saveMu serializes writes of the meta file.
	saveMu sync.Mutex
	cert   *tls.Certificate
	leaf   *x509.Certificate
	pool   *x509.CertPool
	meta   meta
	// sessions holds the TLS session tickets of the current certificate
	// (a renewal starts a new cache: a resumed session carries the
	// certificate of its full handshake).
	sessions tls.ClientSessionCache
}

// sessionCacheSize: tickets kept per certificate (the control plane sends
// two per full handshake; one control-plane address).
const sessionCacheSize = 8

// Load reads the identity from dir; ErrNotEnrolled if there is none.
func Load(dir string) (*Identity, error) {
	credPEM, err := os.ReadFile(filepath.Join(dir, CredFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotEnrolled
	}
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	mb, err := os.ReadFile(filepath.Join(dir, MetaFile))
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	id := &Identity{dir: dir}
	if err := json.Unmarshal(mb, &id.meta); err != nil {
		return nil, fmt.Errorf("identity: %s: %w", MetaFile, err)
	}
	if err := id.setCA(caPEM); err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(credPEM, credPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", CredFile, err)
	}
	if err := id.setCert(&cert); err != nil {
		return nil, err
	}
	return id, nil
}

func (id *Identity) setCA(caPEM []byte) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("identity: CA bundle holds no certificate")
	}
	id.mu.Lock()
	id.pool = pool
	id.mu.Unlock()
	return nil
}

func (id *Identity) setCert(c *tls.Certificate) error {
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return err
	}
	c.Leaf = leaf
	id.mu.Lock()
	id.cert, id.leaf = c, leaf
	id.sessions = pki.NewSessionCache(sessionCacheSize)
	id.mu.Unlock()
	return nil
}

// AgentID is the identity in the certificate.
func (id *Identity) AgentID() string { return id.meta.AgentID }

// Name is the name the agent enrolled with.
func (id *Identity) Name() string { return id.meta.Name }

// SigningKeys are the pinned task-signing public keys.
func (id *Identity) SigningKeys() []*agentv1.SigningKey {
	id.mu.RLock()
	defer id.mu.RUnlock()
	return id.meta.SigningKeys
}

// SigningKeyIDs are the ids of the pinned task-signing keys.
func (id *Identity) SigningKeyIDs() []string {
	id.mu.RLock()
	defer id.mu.RUnlock()
	out := make([]string, 0, len(id.meta.SigningKeys))
	for _, k := range id.meta.SigningKeys {
		out = append(out, k.GetKeyId())
	}
	return out
}

// SetSigningKeys replaces the pinned task-signing keys with the set the
// control plane sent (over the CA-pinned mTLS connection: the stream or a
// renewal), durably; keys missing from it are no longer accepted. It
// reports whether the set changed. A malformed set is refused whole.
func (id *Identity) SetSigningKeys(keys []*agentv1.SigningKey) (bool, error) {
	if len(keys) == 0 {
		return false, errors.New("signing key set is empty: keeping the current keys")
	}
	if len(keys) > 16 {
		return false, fmt.Errorf("signing key set has %d keys (max 16): keeping the current keys", len(keys))
	}
	for _, k := range keys {
		if len(k.GetPublicKey()) != ed25519.PublicKeySize || pki.KeyID(k.GetPublicKey()) != k.GetKeyId() {
			return false, fmt.Errorf("signing key %.64q: not an Ed25519 public key with that id: keeping the current keys", k.GetKeyId())
		}
	}
	id.saveMu.Lock()
	defer id.saveMu.Unlock()
	id.mu.Lock()
	same := len(keys) == len(id.meta.SigningKeys)
	for i := 0; same && i < len(keys); i++ {
		same = proto.Equal(keys[i], id.meta.SigningKeys[i])
	}
	if same {
		id.mu.Unlock()
		return false, nil
	}
	old := id.meta.SigningKeys
	id.meta.SigningKeys = keys
	b, err := json.MarshalIndent(id.meta, "", "  ")
	id.mu.Unlock()
	if err == nil {
		err = pki.WriteFileAtomic(filepath.Join(id.dir, MetaFile), b, 0o600)
	}
	if err != nil {
		id.mu.Lock()
		id.meta.SigningKeys = old
		id.mu.Unlock()
		return false, fmt.Errorf("save signing keys: %w", err)
	}
	return true, nil
}

// Expiry is when the current certificate expires.
func (id *Identity) Expiry() time.Time {
	id.mu.RLock()
	defer id.mu.RUnlock()
	return id.leaf.NotAfter
}

// RenewAt is two thirds into the current certificate's lifetime.
func (id *Identity) RenewAt() time.Time {
	id.mu.RLock()
	defer id.mu.RUnlock()
	life := id.leaf.NotAfter.Sub(id.leaf.NotBefore)
	return id.leaf.NotBefore.Add(life * 2 / 3)
}

// ServerName is the name to verify the control plane's certificate against.
func ServerName(server string) string {
	host, _, err := net.SplitHostPort(server)
	if err != nil {
		return server
	}
	return host
}

// TLSConfig is the mTLS client config; it always presents the newest
// certificate, so a renewal applies to the next connection. It resumes TLS
// sessions of the current certificate.
func (id *Identity) TLSConfig(server string) *tls.Config {
	id.mu.RLock()
	pool := id.pool
	id.mu.RUnlock()
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		ServerName: ServerName(server),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			id.mu.RLock()
			defer id.mu.RUnlock()
			return id.cert, nil
		},
		// TLS 1.3 session resumption: a reconnection (after a network
		// blip or a control-plane restart) skips the signatures of a full
		// handshake.
		ClientSessionCache: certSessions{id},
	}
}

// certSessions is the session cache of the identity's current
// certificate.
type certSessions struct{ id *Identity }

func (c certSessions) cache() tls.ClientSessionCache {
	c.id.mu.RLock()
	defer c.id.mu.RUnlock()
	return c.id.sessions
}

func (c certSessions) Get(key string) (*tls.ClientSessionState, bool) { return c.cache().Get(key) }

func (c certSessions) Put(key string, cs *tls.ClientSessionState) { c.cache().Put(key, cs) }

func newKeyAndCSR() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "tend-agent"}}, key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

func (id *Identity) saveCred(key *ecdsa.PrivateKey, certDER []byte, wantID string) error {
	leaf, err := x509.ParseCertificate(certDER)
	if err != nil {
		return fmt.Errorf("control plane returned an unusable certificate: %w", err)
	}
	if got, err := pki.IdentityOf(leaf); err != nil || got.ID != wantID || got.Role != pki.RoleAgent {
		return fmt.Errorf("control plane returned a certificate for %q, not for agent %s", leaf.Subject.CommonName, wantID)
	}
	keyPEM, err := pki.EncodeKeyPEM(key)
	if err != nil {
		return err
	}
	cred := append(pki.EncodeCertPEM(certDER), keyPEM...)
	cert, err := tls.X509KeyPair(cred, cred)
	if err != nil {
		return fmt.Errorf("control plane returned an unusable certificate: %w", err)
	}
	if err := pki.WriteFileAtomic(filepath.Join(id.dir, CredFile), cred, 0o600); err != nil {
		return err
	}
	return id.setCert(&cert)
}

func (id *Identity) saveMeta() error {
	b, err := json.MarshalIndent(id.meta, "", "  ")
	if err != nil {
		return err
	}
	return pki.WriteFileAtomic(filepath.Join(id.dir, MetaFile), b, 0o600)
}

// EnrollOptions are what the agent sends when it enrolls.
type EnrollOptions struct {
	Server  string
	Token   string // "<id>.<secret>.<pin>"
	Name    string
	Labels  map[string]string
	Version string
	Timeout time.Duration
}

// Enroll trades a join token for an identity and saves it in dir. The
// control plane is trusted only if its CA matches the token's pin.
func Enroll(ctx context.Context, dir string, o EnrollOptions) (*Identity, error) {
	tokID, secret, pin, err := pki.ParseToken(o.Token)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return nil, err
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	conn, err := grpc.NewClient(o.Server, grpc.WithTransportCredentials(credentials.NewTLS(pki.PinnedTLSConfig(pin, ServerName(o.Server)))))
	if err != nil {
		return nil, fmt.Errorf("enroll with %s: %w", o.Server, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	resp, err := agentv1.NewEnrollmentServiceClient(conn).Enroll(ctx, &agentv1.EnrollRequest{
		Token: tokID + "." + secret, CsrDer: csr, Name: o.Name, Labels: o.Labels, Version: o.Version,
	}, grpc.WaitForReady(false))
	if err != nil {
		return nil, fmt.Errorf("enroll with %s: %w", o.Server, err)
	}
	id := &Identity{dir: dir, meta: meta{AgentID: resp.GetAgentId(), Name: o.Name, Server: o.Server, SigningKeys: resp.GetSigningKeys()}}
	if err := id.setCA(resp.GetCaBundlePem()); err != nil {
		return nil, err
	}
	if err := pki.WriteFileAtomic(filepath.Join(dir, CAFile), resp.GetCaBundlePem(), 0o644); err != nil {
		return nil, err
	}
	if err := id.saveMeta(); err != nil {
		return nil, err
	}
	// The credential file is written last: its presence means "enrolled".
	if err := id.saveCred(key, resp.GetCertificateDer(), resp.GetAgentId()); err != nil {
		return nil, err
	}
	return id, nil
}

// Renew gets a fresh certificate (and a new key) over conn, which must be
// an mTLS connection made with TLSConfig.
func (id *Identity) Renew(ctx context.Context, conn grpc.ClientConnInterface) error {
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	resp, err := agentv1.NewEnrollmentServiceClient(conn).Renew(ctx, &agentv1.RenewRequest{CsrDer: csr})
	if err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	if len(resp.GetCaBundlePem()) > 0 {
		if err := id.setCA(resp.GetCaBundlePem()); err != nil {
			return err
		}
		if err := pki.WriteFileAtomic(filepath.Join(id.dir, CAFile), resp.GetCaBundlePem(), 0o644); err != nil {
			return err
		}
	}
	if len(resp.GetSigningKeys()) > 0 {
		if _, err := id.SetSigningKeys(resp.GetSigningKeys()); err != nil {
			return err
		}
	}
	return id.saveCred(key, resp.GetCertificateDer(), id.meta.AgentID)
}

// Fingerprint-free helper for logs: the certificate's serial.
func (id *Identity) Serial() string {
	id.mu.RLock()
	defer id.mu.RUnlock()
	return id.leaf.SerialNumber.Text(16)
}

// Retire moves the current credentials aside (agent.pem → agent.pem.retired)
// so that the agent can enroll again; the outbox and state are kept.
func Retire(dir string) error {
	src := filepath.Join(dir, CredFile)
	if err := os.Rename(src, src+".retired"); err != nil {
		return fmt.Errorf("retire expired credentials: %w", err)
	}
	return nil
}
