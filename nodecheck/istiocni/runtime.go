package istiocni

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
)

// RuntimeCNI is where the node's container runtime reads its CNI config, from its own config
// file: the directory that decides whether pods go through istio-cni, whatever directory
// istio-cni was installed into.
type RuntimeCNI struct {
	Runtime    string `json:"runtime"`    // containerd, cri-o
	ConfigFile string `json:"configFile"` // node path of the file that said it
	// ConfDir is the node path of the CNI config directory the runtime reads (its default
	// /etc/cni/net.d when its config does not set one).
	ConfDir string `json:"confDir"`
	// MaxConfNum is containerd's max_conf_num: how many config files it loads (1 by default:
	// only the first in name order networks pods; 0 or less: all of them). See Loads.
	MaxConfNum int `json:"maxConfNum,omitempty"`
}

// Loads is how many config files of ConfDir, in name order, the runtime networks each pod with;
// 0 means all of them. containerd's CRI plugin hands max_conf_num to go-cni, which loads that many
// files (every one when it is 0 or less) as networks of their own: the first is the pod's default
// network (eth0, the pod's IP), each other one attaches another interface and runs its own plugin
// chain, so istio-cni chained in any of them runs for every pod. A file among them that does not
// load fails them all. CRI-O (ocicni) networks pods through one config, and so does the libcni
// convention when the runtime's config was not read (a nil RuntimeCNI).
//
// containerd's conf_template does not change this: containerd writes its template into ConfDir
// only while no config there loads, so the files read are what it loads either way.
func (r *RuntimeCNI) Loads() int {
	if r == nil || r.Runtime != "containerd" {
		return 1
	}
	return max(r.MaxConfNum, 0)
}

// loaded splits the config files of a directory, in name order, into those the runtime loads
// (Loads) and the others.
func loaded(files []string, loads int) (in, out []string) {
	if loads <= 0 || loads >= len(files) {
		return files, nil
	}
	return files[:loads], files[loads:]
}

// Where the runtimes keep their config on a node, and their default CNI config directory.
const (
	containerdConfig   = "etc/containerd/config.toml"
	crioConfig         = "etc/crio/crio.conf"
	crioDropIns        = "etc/crio/crio.conf.d"
	defaultCNIConfDir  = "/etc/cni/net.d"
	maxRuntimeConfSize = 1 << 20
)

// ReadRuntimeCNI reads the CNI settings of the node's runtime config under hostRoot: containerd's
// config.toml (format versions 1 to 3), else CRI-O's crio.conf and its drop-ins (later ones
// override). nil without error when neither runtime's config is there.
func ReadRuntimeCNI(hostRoot string) (*RuntimeCNI, error) {
	r, err := readContainerdCNI(hostRoot, "/"+containerdConfig)
	if r != nil || err != nil {
		return r, err
	}
	return readCRIOCNI(hostRoot)
}

// ReadContainerdCNI reads the CNI settings of a containerd config file at nodePath (a path on the
// node, resolved under hostRoot); nil without error when there is no such file.
func ReadContainerdCNI(hostRoot, nodePath string) (*RuntimeCNI, error) {
	return readContainerdCNI(hostRoot, nodePath)
}

func readContainerdCNI(hostRoot, nodePath string) (*RuntimeCNI, error) {
	doc, err := readTOML(filepath.Join(hostRoot, nodePath))
	if doc == nil || err != nil {
		return nil, err
	}
	// The CRI plugin's section moved with the config format: v1 "cri", v2 "io.containerd.grpc.v1.cri",
	// v3 (containerd 2.x) "io.containerd.cri.v1.runtime".
	section := []string{"plugins", "io.containerd.grpc.v1.cri", "cni"}
	switch v, _ := doc["version"].(int64); v {
	case 0, 1:
		section = []string{"plugins", "cri", "cni"}
	case 3:
		section = []string{"plugins", "io.containerd.cri.v1.runtime", "cni"}
	}
	r := &RuntimeCNI{Runtime: "containerd", ConfigFile: nodePath, ConfDir: defaultCNIConfDir, MaxConfNum: 1}
	apply := func(doc map[string]any, file string) {
		cni := table(doc, section...)
		if s, ok := cni["conf_dir"].(string); ok && s != "" {
			r.ConfDir, r.ConfigFile = s, file
		}
		if n, ok := cni["max_conf_num"].(int64); ok {
			r.MaxConfNum = int(n)
		}
	}
	apply(doc, nodePath)
	// Imported files (containerd 2.x imports /etc/containerd/conf.d/*.toml by default) are
	// merged over the main file in order, as containerd merges them.
	imports, _ := doc["imports"].([]any)
	for _, imp := range imports {
		pattern, _ := imp.(string)
		if pattern == "" {
			continue
		}
		if !filepath.IsAbs(pattern) {
			pattern = filepath.Join(filepath.Dir(nodePath), pattern)
		}
		matches, err := filepath.Glob(filepath.Join(hostRoot, pattern))
		if err != nil {
			return nil, fmt.Errorf("containerd config %s imports %q: %w", nodePath, pattern, err)
		}
		slices.Sort(matches)
		for _, m := range matches {
			sub, err := readTOML(m)
			if err != nil {
				return nil, err
			}
			rel, _ := filepath.Rel(filepath.Join(hostRoot, "/"), m)
			apply(sub, "/"+rel)
		}
	}
	return r, nil
}

func readCRIOCNI(hostRoot string) (*RuntimeCNI, error) {
	files := []string{"/" + crioConfig}
	entries, err := os.ReadDir(filepath.Join(hostRoot, crioDropIns))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading CRI-O's drop-in directory: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".conf") {
			files = append(files, "/"+crioDropIns+"/"+e.Name())
		}
	}
	slices.Sort(files[1:])
	var r *RuntimeCNI
	for _, f := range files {
		doc, err := readTOML(filepath.Join(hostRoot, f))
		if err != nil {
			return nil, err
		}
		if doc == nil {
			continue
		}
		if r == nil {
			r = &RuntimeCNI{Runtime: "cri-o", ConfigFile: f, ConfDir: defaultCNIConfDir}
		}
		if s, ok := table(doc, "crio", "network")["network_dir"].(string); ok && s != "" {
			r.ConfDir, r.ConfigFile = s, f
		}
	}
	return r, nil
}

// readTOML reads a TOML file into a document; nil without error when it does not exist.
func readTOML(path string) (map[string]any, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the runtime's config: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRuntimeConfSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading the runtime's config %s: %w", path, err)
	}
	if len(b) > maxRuntimeConfSize {
		return nil, fmt.Errorf("the runtime's config %s is larger than %d bytes", path, maxRuntimeConfSize)
	}
	doc := map[string]any{}
	if err := toml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("the runtime's config %s is not TOML: %w", path, err)
	}
	return doc, nil
}

// table walks nested TOML tables; an absent one is empty.
func table(doc map[string]any, keys ...string) map[string]any {
	cur := doc
	for _, k := range keys {
		next, ok := cur[k].(map[string]any)
		if !ok {
			return nil
		}
		cur = next
	}
	return cur
}
