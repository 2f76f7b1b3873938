# Build, test and clean the DDPM book.
#
#   make book    build the static site into book/_build/html (the main command)
#   make test    build the site, then run every test (library, notebooks, browser)
#   make check   the fast library tests only, no book build (under 2 minutes on 2 cores)
#   make pdf     the whole book as one PDF (needs TeX Live, see the target)
#   make clean   remove what the build made (not .venv; `make distclean` does)
#
# Everything runs with the project's virtual environment, .venv/.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The notebooks' kernel ("python3") runs `python` from PATH: make it the venv's.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYTHONDONTWRITEBYTECODE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# TORCH=cpu (`make book TORCH=cpu`, `make test TORCH=cpu`): install PyTorch's CPU-only
# build from PyTorch's own wheel index before the project, instead of the default
# wheel from PyPI, which on Linux brings the CUDA libraries along even where there is
# no NVIDIA GPU. Nothing contacts that index unless asked. The venv remembers which
# build it holds: switching needs `make distclean` first (the recipe says so).
TORCH ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
ifneq ($(filter-out cpu,$(TORCH)),)
$(error TORCH=$(TORCH) is not a choice: leave it unset for the default wheels from PyPI, or TORCH=cpu)
endif

VENV_STAMP := $(VENV)/.installed-ddpm-lib$(if $(TORCH),-torch-$(TORCH))

NOTEBOOK_SOURCES := $(wildcard notebooks/*.md)

MATHJAX_VERSION := 3.2.2
MATHJAX_DIR     := book/_static/mathjax
MATHJAX_STAMP   := $(MATHJAX_DIR)/.mathjax-$(MATHJAX_VERSION)
# What the site needs from the package: the TeX -> CommonHTML component, its
# fonts, and the pieces it loads on demand (TeX extensions, menu, accessibility).
MATHJAX_PARTS   := tex-chtml.js input output/chtml.js output/chtml a11y ui sre adaptors

BOOK_HTML := book/_build/html
JB_FLAGS  := -W -n --keep-going --all

PYTEST_ARGS ?=
BUILD_START := $(VENV)/.book-build-start

# `make test` runs the tests as a CPU with AVX2 but no AVX-512 sees them (most
# laptops; bf16 there is emulated and ten times slower than fp32), on any x86
# machine, by capping oneDNN and ATen: the slowest supported path is the one CI
# exercises, whatever CPU it runs on, and the book build (`make book`) keeps the
# machine's native numerics, so both are executed. `make test CPU_CAP=` runs the
# tests natively; the cap is skipped where the CPU is not x86.
CPU_CAP ?= avx2
ifeq ($(CPU_CAP),avx2)
ifneq ($(filter x86_64 amd64 i686,$(shell uname -m)),)
TEST_ENV := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
endif
endif

.PHONY: help venv data notebooks mathjax book pdf test check clean distclean

help:
	@echo "make book    build the site (book/_build/html)"
	@echo "make test    build the site and run all tests"
	@echo "make check   the fast library tests (no book build, no notebooks, browser, torchrun or slow tests)"
	@echo "make pdf     the whole book as one PDF, book/_build/latex/ddpm-book.pdf (needs TeX Live)"
	@echo "make venv | data | notebooks | mathjax | clean | distclean"
	@echo "TORCH=cpu with any of them: PyTorch's CPU-only build (no CUDA libraries)"

## venv: create .venv if missing and install the project with all extras.
## Re-runs pip only when pyproject.toml changed since the last install.
venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(TORCH),cpu)
	$(BIN)/python -m pip install --index-url $(TORCH_CPU_INDEX) "torch>=2.4" "torchvision>=0.19"
	@$(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)" || { \
	  echo "$(VENV) already holds a CUDA build of torch, which TORCH=cpu does not replace:" >&2; \
	  echo "run 'make distclean', then your make command again with TORCH=cpu" >&2; exit 1; }
endif
	$(BIN)/python -m pip install -e ".[notebooks,book,test]"
	@touch $@

## data: MNIST into ~/.cache/ddpm_lib/data (or $DDPM_DATA_DIR), checksummed.
data: venv
	$(BIN)/python -c "from ddpm_lib.data import ensure_mnist; ensure_mnist()"

## notebooks: generate (or refresh) notebooks/*.ipynb from the MyST sources.
notebooks: venv
ifneq ($(strip $(NOTEBOOK_SOURCES)),)
	$(BIN)/jupytext --sync $(NOTEBOOK_SOURCES)
else
	@echo "no notebooks/*.md yet"
endif

## mathjax: unpack MathJax 3 from the npm registry into book/_static/mathjax
## (gitignored), so that the site typesets maths with no internet.
mathjax: $(MATHJAX_STAMP)

$(MATHJAX_STAMP):
	@command -v npm >/dev/null || { echo "npm is needed to fetch MathJax (apt-get install npm)" >&2; exit 1; }
	rm -rf $(MATHJAX_DIR)
	mkdir -p $(MATHJAX_DIR)
	set -e; tmp=$$(mktemp -d); \
	  trap 'rm -rf "$$tmp"' EXIT; \
	  (cd "$$tmp" && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null); \
	  tar -xzf "$$tmp"/mathjax-$(MATHJAX_VERSION).tgz -C $(MATHJAX_DIR) --strip-components=2 \
	    $(addprefix package/es5/,$(MATHJAX_PARTS)); \
	  test -f $(MATHJAX_DIR)/tex-chtml.js; \
	  test -d $(MATHJAX_DIR)/output/chtml/fonts/woff-v2
	@touch $@

## book: THE main command. Runs every chapter (cached), fails on any cell error
## or Sphinx warning, and writes the site to book/_build/html.
book: venv data notebooks mathjax
	@date +%s > $(BUILD_START)
	$(BIN)/jupyter-book build . --config book/_config.yml --toc book/_toc.yml \
	  --path-output book $(JB_FLAGS)
	@echo
	@echo "jupyter-book build took $$(( $$(date +%s) - $$(cat $(BUILD_START)) )) s"
	@echo
	@echo "The book is in $(BOOK_HTML)/index.html"
	@echo "To read it:  $(PYTHON) -m http.server -d $(BOOK_HTML) 8000"
	@echo "             then open http://127.0.0.1:8000/"

## pdf: the whole book as one PDF, $(BOOK_PDF), typeset offline by LaTeX
## (xelatex) from the chapters as the site runs them (the same execution cache).
## TeX Live is not a Python package: on Debian or Ubuntu,
##   sudo apt-get install --no-install-recommends $(PDF_DEBIAN_PACKAGES)
## (texlive-fonts-extra alone, for the bbm fonts that sphinx-jupyterbook-latex
## loads, is a 509 MB download, 1.4 GB installed). tests/test_pdf.py checks the PDF.
PDF_DEBIAN_PACKAGES := texlive-xetex texlive-latex-extra texlive-fonts-recommended \
  texlive-fonts-extra latexmk fonts-freefont-otf poppler-utils
BOOK_PDF := book/_build/latex/ddpm-book.pdf
pdf: venv data notebooks
	@for tool in xelatex latexmk kpsewhich; do command -v $$tool >/dev/null || { \
	  echo "make pdf needs TeX Live ($$tool is missing). On Debian or Ubuntu:" >&2; \
	  echo "  sudo apt-get install --no-install-recommends $(PDF_DEBIAN_PACKAGES)" >&2; exit 1; }; done
	@kpsewhich bbm.sty >/dev/null || { \
	  echo "make pdf needs the bbm fonts of TeX Live: sudo apt-get install texlive-fonts-extra" >&2; exit 1; }
	$(BIN)/jupyter-book build . --config book/_config.yml --toc book/_toc.yml \
	  --path-output book --builder pdflatex
	@test -f $(BOOK_PDF) || { echo "LaTeX ran but wrote no $(BOOK_PDF)" >&2; exit 1; }
	@echo "The book as one PDF: $(BOOK_PDF); building the site again so that it links the PDF"
	$(MAKE) --no-print-directory book

## test: everything, in one pytest run: library tests, the site in a real
## browser (tests/), and every notebook with nbval.
## The .ipynb get the site build's outputs first, so that nbval compares every
## cell tagged `nbval-check-output` with what the site shows.
test: book
	$(BIN)/python tests/nbval_reference.py
	$(TEST_ENV) $(BIN)/python -c "import torch; print('tests run with ATen', torch.backends.cpu.get_cpu_capability(), '$(TEST_ENV)')"
	$(TEST_ENV) $(BIN)/python -m pytest tests $(wildcard notebooks) --nbval-lax --nbval-cell-timeout=240 --durations=25 $(PYTEST_ARGS)

## check: the fast inner loop: the library tests that are not marked slow, notebook,
## browser or distributed (markers: tests/conftest.py), under the same CPU cap as
## `make test`, with no book build. `make test` still runs everything.
CHECK_MARKERS := not slow and not notebook and not browser and not distributed

check: venv data
	$(TEST_ENV) $(BIN)/python -c "import torch; print('tests run with ATen', torch.backends.cpu.get_cpu_capability(), '$(TEST_ENV)')"
	@start=$$(date +%s); \
	  $(TEST_ENV) $(BIN)/python -m pytest tests -m "$(CHECK_MARKERS)" --durations=10 $(PYTEST_ARGS); \
	  rc=$$?; echo "make check took $$(( $$(date +%s) - start )) s"; exit $$rc

clean:
	rm -rf book/_build $(MATHJAX_DIR) artifacts/screenshots .pytest_cache
	@# only the .ipynb that jupytext generated from a .md source
	@for md in $(NOTEBOOK_SOURCES); do rm -f "$${md%.md}.ipynb"; done
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
