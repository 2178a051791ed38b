package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshdoctor/meshdoctor/nodecheck"
	"github.com/meshdoctor/meshdoctor/nodecheck/cnichain"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover/containerd"
	"github.com/meshdoctor/meshdoctor/nodecheck/discover/cri"
	"github.com/meshdoctor/meshdoctor/nodecheck/istiocni"
)

// discoveryTimeout bounds one listing of the node's pods through the runtime.
const discoveryTimeout = 30 * time.Second

// discoveryOptions are the flags that say how to find the node's pods.
type discoveryOptions struct {
	containerdAddress string
	criEndpoint       string
}

func addDiscoveryFlags(f *pflag.FlagSet, o *discoveryOptions) {
	f.StringVar(&o.containerdAddress, "containerd-address", containerd.DefaultAddress,
		"containerd's socket, to discover the node's pods (namespace k8s.io)")
	f.StringVar(&o.criEndpoint, "cri-endpoint", "",
		"discover pods through this CRI endpoint instead of the containerd client (e.g. unix:///run/crio/crio.sock)")
}

// discoverTargets returns every pod sandbox the runtime has: what `check` looks at without --netns.
func discoverTargets(ctx context.Context, o checkOptions, log *slog.Logger) ([]nodecheck.Target, error) {
	rt, where, err := newRuntime(o.discovery, o.hostRoot)
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	confDir, runtimeCNI := o.node.confDir(o.hostRoot, log)
	rt = cniExcluding{Runtime: rt, confDir: confDir, loads: runtimeCNI.Loads(), chain: o.node.chain, log: log}
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	start := time.Now()
	targets, err := rt.Discover(ctx)
	if err != nil {
		return nil, fmt.Errorf("discovering pods through %s: %w", where, err)
	}
	skipped := 0
	for _, t := range targets {
		if t.SkipReason != "" {
			skipped++
		}
	}
	log.Info("discovered pods", "through", where, "pods", len(targets), "skipped", skipped, "duration", time.Since(start))
	return targets, nil
}

// cniExcluding is a runtime whose pods carry what istio-cni's install says of them, read at every
// listing: its namespace exclusions and multus attachment (from the CNI config dir), when the
// node's istio-cni-node came up (from the listing itself), and the window of the CNI chain's
// history without istio-cni each pod was networked in, if any.
type cniExcluding struct {
	discover.Runtime
	confDir string
	loads   int // the config files the runtime loads (istiocni.RuntimeCNI.Loads)
	chain   *cnichain.Timeline
	log     *slog.Logger
}

func (r cniExcluding) Discover(ctx context.Context) ([]nodecheck.Target, error) {
	ts, err := r.Runtime.Discover(ctx)
	if err != nil {
		return nil, err
	}
	if at, ok := istiocni.AgentStartedAt(ts); ok {
		for i := range ts {
			ts[i].IstioCNIStartedAt = at
		}
	}
	if r.chain != nil {
		for i := range ts {
			if at, ok := istiocni.NetworkedAt(ts[i]); ok {
				if gap, ok := r.chain.GapAt(at); ok {
					ts[i].CNIChainGap = &gap
				}
			}
		}
	}
	ex, err := istiocni.ReadExclusions(r.confDir, r.loads)
	if err != nil {
		r.log.Debug("istio-cni's excluded namespaces not read", "err", err)
		return ts, nil
	}
	discover.ApplyCNIExclusions(ts, ex.Namespaces, ex.File)
	if ex.Multus {
		discover.ApplyMultusAttachment(ts, ex.File, func(v string) (bool, error) {
			nets, err := istiocni.MultusNetworks(v)
			return istiocni.AttachesIstioCNI(nets), err
		})
	}
	return ts, nil
}

func newRuntime(o discoveryOptions, hostRoot string) (discover.Runtime, string, error) {
	if o.criEndpoint != "" {
		rt, err := cri.New(o.criEndpoint, hostRoot)
		return rt, "CRI endpoint " + o.criEndpoint, err
	}
	rt, err := containerd.New(o.containerdAddress, hostRoot)
	return rt, "containerd at " + o.containerdAddress, err
}
