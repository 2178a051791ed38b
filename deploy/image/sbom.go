package image

import (
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// SPDX document types: the subset of SPDX 2.3 (JSON) an SBOM of Go modules fills.
type (
	spdxDocument struct {
		SPDXVersion       string             `json:"spdxVersion"`
		DataLicense       string             `json:"dataLicense"`
		SPDXID            string             `json:"SPDXID"`
		Name              string             `json:"name"`
		DocumentNamespace string             `json:"documentNamespace"`
		CreationInfo      spdxCreationInfo   `json:"creationInfo"`
		Packages          []SPDXPackage      `json:"packages"`
		Relationships     []spdxRelationship `json:"relationships"`
	}
	spdxCreationInfo struct {
		Created  string   `json:"created"`
		Creators []string `json:"creators"`
	}
	spdxRelationship struct {
		Element string `json:"spdxElementId"`
		Type    string `json:"relationshipType"`
		Related string `json:"relatedSpdxElement"`
	}
	spdxChecksum struct {
		Algorithm string `json:"algorithm"`
		Value     string `json:"checksumValue"`
	}
	spdxExternalRef struct {
		Category string `json:"referenceCategory"`
		Type     string `json:"referenceType"`
		Locator  string `json:"referenceLocator"`
	}
)

// SPDXPackage is one package of the SBOM: the binary's main module, a module linked into it, or
// the Go standard library.
type SPDXPackage struct {
	Name             string            `json:"name"`
	SPDXID           string            `json:"SPDXID"`
	VersionInfo      string            `json:"versionInfo"`
	DownloadLocation string            `json:"downloadLocation"`
	FilesAnalyzed    bool              `json:"filesAnalyzed"`
	LicenseConcluded string            `json:"licenseConcluded"`
	LicenseDeclared  string            `json:"licenseDeclared"`
	CopyrightText    string            `json:"copyrightText"`
	Checksums        []spdxChecksum    `json:"checksums,omitempty"`
	ExternalRefs     []spdxExternalRef `json:"externalRefs,omitempty"`
	Comment          string            `json:"comment,omitempty"`
}

var notInSPDXID = regexp.MustCompile(`[^A-Za-z0-9.-]+`)

// SPDX returns the SBOM of a Go binary as SPDX 2.3 JSON: its main module (with the binary's
// SHA-256), every module the Go linker recorded in it (with the go.sum hash it was checked
// against, and the replacement when there is one) and the standard library of its toolchain.
// It is read from the binary's build info, so it lists what was linked, not what go.mod names.
func SPDX(info *buildinfo.BuildInfo, bin []byte, spec Spec) ([]byte, error) {
	version := spec.Version
	if version == "" {
		version = info.Main.Version
	}
	binSum := sha256Hex(bin)
	mainID := "SPDXRef-Package-" + notInSPDXID.ReplaceAllString(info.Main.Path, "-")
	location := "NOASSERTION"
	if spec.Source != "" {
		location = "git+" + spec.Source
		if spec.Revision != "" {
			location += "@" + spec.Revision
		}
	}
	doc := spdxDocument{
		SPDXVersion: "SPDX-2.3",
		DataLicense: "CC0-1.0",
		SPDXID:      "SPDXRef-DOCUMENT",
		Name:        "meshdoctor-" + version,
		// Unique per binary, and still the same for two builds of one.
		DocumentNamespace: "https://github.com/meshdoctor/meshdoctor/spdx/meshdoctor-" + version + "-" + binSum,
		CreationInfo: spdxCreationInfo{
			Created:  spec.Created.UTC().Truncate(time.Second).Format(time.RFC3339),
			Creators: []string{"Tool: meshdoctor-image", "Organization: meshdoctor"},
		},
		Packages: []SPDXPackage{{
			Name:             info.Main.Path,
			SPDXID:           mainID,
			VersionInfo:      version,
			DownloadLocation: location,
			LicenseConcluded: "NOASSERTION",
			LicenseDeclared:  "NOASSERTION",
			CopyrightText:    "NOASSERTION",
			Checksums:        []spdxChecksum{{Algorithm: "SHA256", Value: binSum}},
			ExternalRefs:     []spdxExternalRef{purl(info.Main.Path, version)},
			Comment:          "the binary " + BinaryPath + ", built with " + info.GoVersion + " " + buildSettings(info),
		}},
		Relationships: []spdxRelationship{{Element: "SPDXRef-DOCUMENT", Type: "DESCRIBES", Related: mainID}},
	}
	add := func(p SPDXPackage) {
		doc.Packages = append(doc.Packages, p)
		doc.Relationships = append(doc.Relationships, spdxRelationship{Element: mainID, Type: "DEPENDS_ON", Related: p.SPDXID})
	}
	for _, dep := range info.Deps {
		m := dep
		var comment string
		if dep.Replace != nil {
			m = dep.Replace
			comment = "replaces " + dep.Path + "@" + dep.Version + "; "
		}
		if m.Sum != "" {
			comment += "go.sum " + m.Sum
		}
		add(SPDXPackage{
			Name:             m.Path,
			SPDXID:           "SPDXRef-Package-go-module-" + notInSPDXID.ReplaceAllString(m.Path, "-"),
			VersionInfo:      m.Version,
			DownloadLocation: "https://proxy.golang.org/" + m.Path + "/@v/" + m.Version + ".zip",
			LicenseConcluded: "NOASSERTION",
			LicenseDeclared:  "NOASSERTION",
			CopyrightText:    "NOASSERTION",
			ExternalRefs:     []spdxExternalRef{purl(m.Path, m.Version)},
			Comment:          strings.TrimSuffix(comment, "; "),
		})
	}
	add(SPDXPackage{
		Name:             "stdlib",
		SPDXID:           "SPDXRef-Package-go-stdlib",
		VersionInfo:      info.GoVersion,
		DownloadLocation: "https://go.dev/dl/",
		LicenseConcluded: "NOASSERTION",
		LicenseDeclared:  "BSD-3-Clause",
		CopyrightText:    "NOASSERTION",
		ExternalRefs:     []spdxExternalRef{purl("stdlib", info.GoVersion)},
	})
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("writing the SBOM: %w", err)
	}
	return append(out, '\n'), nil
}

// ReadSPDXPackages returns the packages of an SBOM SPDX wrote.
func ReadSPDXPackages(sbom []byte) ([]SPDXPackage, error) {
	var doc spdxDocument
	if err := json.Unmarshal(sbom, &doc); err != nil {
		return nil, fmt.Errorf("reading the SBOM: %w", err)
	}
	return doc.Packages, nil
}

func purl(module, version string) spdxExternalRef {
	return spdxExternalRef{Category: "PACKAGE-MANAGER", Type: "purl", Locator: "pkg:golang/" + module + "@" + version}
}

// buildSettings says how the binary was built, in the words of `go version -m`.
func buildSettings(info *buildinfo.BuildInfo) string {
	var s []string
	for _, kv := range info.Settings {
		switch kv.Key {
		case "CGO_ENABLED", "GOOS", "GOARCH", "-trimpath", "-ldflags", "vcs.revision":
			s = append(s, kv.Key+"="+kv.Value)
		}
	}
	return strings.Join(s, " ")
}
