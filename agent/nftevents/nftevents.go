// Package nftevents tells the agent, within milliseconds, that a pod's nftables changed: a
// flushed chain or a deleted jump is re-verified at once instead of at the next periodic check.
//
// Per pod network namespace it holds one netlink socket, opened inside that namespace, that
// listens to the kernel's nftables change notifications (NFNLGRP_NFTABLES); one epoll loop serves
// every socket. It only listens: the socket creates no table, takes no lock and writes nothing in
// the pod's namespace, and it is closed when the pod goes. Both iptables-nft and Istio's native
// nftables write through nf_tables and are seen; iptables-legacy is not (its rules are not
// nf_tables objects) and those pods stay on the periodic re-check.
package nftevents

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/meshdoctor/meshdoctor/agent"
	"github.com/meshdoctor/meshdoctor/nodecheck/innetns"
)

// Change is what one wake-up read from a pod's socket.
type Change struct {
	// Key and Netns name the pod, as given to Watch.
	Key, Netns string
	// Kinds are the nftables messages seen ("delrule", "newchain", …), sorted; "overflow" when
	// the kernel dropped notifications (too many at once: something changed anyway).
	Kinds []string
}

// Watcher keeps the sockets and calls OnChange (from its loop: it must not block long) after each
// wake-up of a pod's socket.
type Watcher struct {
	OnChange func(Change)
	Log      *slog.Logger

	mu    sync.Mutex
	epfd  int
	byFD  map[int]*subscription
	byKey map[string]*subscription
}

type subscription struct {
	key, netns string
	fd         int
}

// New creates the epoll instance; Run serves it; Close releases every socket.
func New(onChange func(Change), log *slog.Logger) (*Watcher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	return &Watcher{OnChange: onChange, Log: log, epfd: epfd, byFD: map[int]*subscription{}, byKey: map[string]*subscription{}}, nil
}

// Watch subscribes to the nftables notifications of the pod key's network namespace at netns.
// Watching a pod again with the same namespace does nothing; with another one (a new sandbox) it
// moves the subscription.
func (w *Watcher) Watch(ctx context.Context, key, netns string) error {
	w.mu.Lock()
	if s, ok := w.byKey[key]; ok && s.netns == netns {
		w.mu.Unlock()
		return nil
	}
	w.mu.Unlock()
	fd, err := subscribe(ctx, netns)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.epfd < 0 {
		unix.Close(fd)
		return errors.New("nftables watch closed")
	}
	if old, ok := w.byKey[key]; ok {
		w.dropLocked(old)
	}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	s := &subscription{key: key, netns: netns, fd: fd}
	w.byFD[fd], w.byKey[key] = s, s
	return nil
}

// Forget closes the pod's socket, if any.
func (w *Watcher) Forget(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if s, ok := w.byKey[key]; ok {
		w.dropLocked(s)
	}
}

// Watched lists the pods with a socket, sorted.
func (w *Watcher) Watched() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var keys []string
	for k := range w.byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (w *Watcher) dropLocked(s *subscription) {
	_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
	unix.Close(s.fd)
	delete(w.byFD, s.fd)
	if w.byKey[s.key] == s {
		delete(w.byKey, s.key)
	}
}

// subscribe opens a NETLINK_NETFILTER socket inside the namespace (a socket belongs to the
// namespace it was created in, whatever thread reads it later) and joins the nftables group.
func subscribe(ctx context.Context, netns string) (int, error) {
	fd := -1
	err := innetns.Do(ctx, netns, func() error {
		s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		if err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		if err := unix.Bind(s, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			unix.Close(s)
			return fmt.Errorf("binding the netlink socket: %w", err)
		}
		if err := unix.SetsockoptInt(s, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, unix.NFNLGRP_NFTABLES); err != nil {
			unix.Close(s)
			return fmt.Errorf("joining NFNLGRP_NFTABLES: %w", err)
		}
		fd = s
		return nil
	})
	if err != nil {
		return -1, fmt.Errorf("subscribing to nftables changes in %s: %w", netns, err)
	}
	return fd, nil
}

// Run waits for notifications until ctx ends, then closes everything.
func (w *Watcher) Run(ctx context.Context) error {
	defer w.Close()
	events := make([]unix.EpollEvent, 64)
	buf := make([]byte, 64<<10)
	for ctx.Err() == nil {
		w.mu.Lock()
		epfd := w.epfd
		w.mu.Unlock()
		if epfd < 0 {
			return nil
		}
		// A bounded wait so that the end of ctx is seen without a wake-up descriptor.
		n, err := unix.EpollWait(epfd, events, 500)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for _, ev := range events[:n] {
			w.drain(int(ev.Fd), buf)
		}
	}
	return nil
}

// drain reads every pending message of one socket and reports them as one change.
func (w *Watcher) drain(fd int, buf []byte) {
	w.mu.Lock()
	s, ok := w.byFD[fd]
	if !ok {
		w.mu.Unlock()
		return
	}
	c := Change{Key: s.key, Netns: s.netns}
	kinds := map[string]bool{}
	for {
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			break
		}
		if errors.Is(err, unix.ENOBUFS) {
			kinds["overflow"] = true
			continue
		}
		if err != nil || n == 0 {
			// A socket that errors is closed: the pod stays on the periodic re-check.
			w.Log.Warn("nftables notifications stopped for a pod", "pod", s.key, "err", err)
			w.dropLocked(s)
			kinds["socket error"] = true
			break
		}
		for _, k := range messageKinds(buf[:n]) {
			kinds[k] = true
		}
	}
	w.mu.Unlock()
	for k := range kinds {
		c.Kinds = append(c.Kinds, k)
	}
	slices.Sort(c.Kinds)
	if len(c.Kinds) > 0 && w.OnChange != nil {
		w.OnChange(c)
	}
}

// Close releases the epoll instance and every socket.
func (w *Watcher) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.epfd < 0 {
		return
	}
	for _, s := range w.byFD {
		w.dropLocked(s)
	}
	unix.Close(w.epfd)
	w.epfd = -1
}

// nftables message types (linux/netfilter/nf_tables.h), by name.
var nftMessages = map[uint16]string{
	unix.NFT_MSG_NEWTABLE: "newtable", unix.NFT_MSG_DELTABLE: "deltable",
	unix.NFT_MSG_NEWCHAIN: "newchain", unix.NFT_MSG_DELCHAIN: "delchain",
	unix.NFT_MSG_NEWRULE: "newrule", unix.NFT_MSG_DELRULE: "delrule",
	unix.NFT_MSG_NEWSET: "newset", unix.NFT_MSG_DELSET: "delset",
	unix.NFT_MSG_NEWSETELEM: "newsetelem", unix.NFT_MSG_DELSETELEM: "delsetelem",
	unix.NFT_MSG_NEWOBJ: "newobj", unix.NFT_MSG_DELOBJ: "delobj",
	unix.NFT_MSG_NEWFLOWTABLE: "newflowtable", unix.NFT_MSG_DELFLOWTABLE: "delflowtable",
}

// messageKinds names the nftables messages of one datagram. NEWGEN (the end of every
// transaction) says nothing of its own and is left out; a truncated header ends the datagram.
func messageKinds(b []byte) []string {
	var out []string
	for len(b) >= unix.NLMSG_HDRLEN {
		length := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		if length < unix.NLMSG_HDRLEN || length > len(b) {
			break
		}
		if typ>>8 == unix.NFNL_SUBSYS_NFTABLES {
			msg := typ & 0xff
			if name, ok := nftMessages[msg]; ok {
				out = append(out, name)
			} else if msg != unix.NFT_MSG_NEWGEN {
				out = append(out, fmt.Sprintf("msg%d", msg))
			}
		}
		adv := (length + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if adv > len(b) {
			break
		}
		b = b[adv:]
	}
	return out
}

// Describe is a short text of a change, for the agent's "why".
func (c Change) Describe() string {
	return "nftables changed in the pod's netns (" + strings.Join(c.Kinds, ", ") + ")"
}

// Follower keeps a Watcher's sockets in step with the agent's pods: an agent.Observer. The agent
// calls observers with its state locked, so subscriptions are made from Run, in order.
type Follower struct {
	Watcher *Watcher
	ops     chan follow
	log     *slog.Logger
}

type follow struct {
	key, netns string
	forget     bool
}

// maxPending bounds the subscriptions waiting for Run; beyond it a pod stays on the periodic
// re-check until its next check asks again.
const maxPending = 1024

// NewFollower returns a follower of w.
func NewFollower(w *Watcher) *Follower {
	return &Follower{Watcher: w, ops: make(chan follow, maxPending), log: w.Log}
}

var _ agent.Observer = (*Follower)(nil)

// PodChecked subscribes a pod that is meant to be captured and has its own namespace.
func (f *Follower) PodChecked(_ *agent.PodState, cur agent.PodState) {
	t := cur.Target
	if t.Netns == "" || t.HostNetwork || t.SkipReason != "" {
		f.enqueue(follow{key: cur.Key(), forget: true})
		return
	}
	f.enqueue(follow{key: cur.Key(), netns: t.Netns})
}

// PodGone closes the pod's socket: it keeps the namespace alive while open.
func (f *Follower) PodGone(last agent.PodState) { f.enqueue(follow{key: last.Key(), forget: true}) }

// NodeChecked does nothing: node checks have no namespace of their own.
func (f *Follower) NodeChecked(_, _ agent.NodeState) {}

func (f *Follower) enqueue(op follow) {
	select {
	case f.ops <- op:
	default:
		f.log.Warn("nftables watch: too many pending subscriptions; the pod stays on the periodic re-check", "pod", op.key)
	}
}

// Run makes the subscriptions until ctx ends.
func (f *Follower) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case op := <-f.ops:
			if op.forget {
				f.Watcher.Forget(op.key)
				continue
			}
			if err := f.Watcher.Watch(ctx, op.key, op.netns); err != nil && ctx.Err() == nil {
				// A namespace gone meanwhile is the pod leaving; the next check says the rest.
				f.log.Debug("nftables watch: not subscribed", "pod", op.key, "err", err)
			}
		}
	}
}
