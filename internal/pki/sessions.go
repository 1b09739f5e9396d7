package pki

import (
	"crypto/tls"
	"sync"
)

// NewSessionCache returns a TLS client session cache (an LRU of capacity
// keys) that survives one failed resumption per ticket.
//
// crypto/tls deletes a cached ticket whenever a handshake that offered it
// fails, whatever the reason. After a control-plane restart most such
// failures are the network's (the old process closing connections that
// were mid-handshake, a handshake slot that timed out), and an agent that
// lost its ticket that way pays a full handshake in the reconnect storm.
// Here a deleted ticket is kept aside and offered once more; if that
// attempt fails too (a ticket the server really refuses, e.g. a corrupted
// PSK, which RFC 8446 servers abort on), it is gone, so a bad ticket costs
// at most one extra attempt and never blocks reconnection.
func NewSessionCache(capacity int) tls.ClientSessionCache {
	return &sessionCache{lru: tls.NewLRUClientSessionCache(capacity), spare: map[string]*tls.ClientSessionState{}}
}

type sessionCache struct {
	lru   tls.ClientSessionCache
	mu    sync.Mutex
	spare map[string]*tls.ClientSessionState // deleted once, offered once more
}

func (c *sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	// (tls's LRU keeps a nil entry for a key deleted while absent.)
	if cs, ok := c.lru.Get(key); ok && cs != nil {
		return cs, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cs, ok := c.spare[key]
	delete(c.spare, key) // one more try only
	return cs, ok
}

func (c *sessionCache) Put(key string, cs *tls.ClientSessionState) {
	c.mu.Lock()
	if cs == nil {
		if old, ok := c.lru.Get(key); ok && old != nil && len(c.spare) < 64 {
			c.spare[key] = old
		}
	} else {
		delete(c.spare, key)
	}
	c.mu.Unlock()
	if cs != nil {
		c.lru.Put(key, cs)
	} else if old, ok := c.lru.Get(key); ok && old != nil {
		c.lru.Put(key, nil)
	}
}
