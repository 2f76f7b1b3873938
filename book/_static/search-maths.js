// Search results without raw TeX (issue 25).
//
// Sphinx's search page shows, under each result, a window of the page's text cut around the
// search words (searchtools.js: Search.htmlToText, then makeSearchSummary). The page's maths
// is still TeX there, "\(\bar\alpha_t\)", and a window can cut an expression in half, so
// MathJax cannot typeset it. Before the text is taken, each maths element's TeX becomes a
// plain-text reading ("ᾱ_t"), and so does the maths in the results' titles.
// The script does nothing on the other pages (no Search object there).
"use strict";

const SEARCH_MATHS_SYMBOLS = {
  alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ε", varepsilon: "ε", zeta: "ζ", eta: "η",
  theta: "θ", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", xi: "ξ", pi: "π", rho: "ρ", sigma: "σ",
  varsigma: "ς", tau: "τ", phi: "φ", varphi: "φ", chi: "χ", psi: "ψ", omega: "ω",
  Gamma: "Γ", Delta: "Δ", Theta: "Θ", Lambda: "Λ", Xi: "Ξ", Pi: "Π", Sigma: "Σ", Phi: "Φ", Psi: "Ψ",
  Omega: "Ω", nabla: "∇", partial: "∂", infty: "∞", sum: "∑", prod: "∏", int: "∫", sqrt: "√",
  cdot: "·", times: "×", le: "≤", leq: "≤", ge: "≥", geq: "≥", ne: "≠", neq: "≠", approx: "≈",
  sim: "~", propto: "∝", to: "→", rightarrow: "→", leftarrow: "←", mid: "|", lVert: "‖", rVert: "‖",
  Vert: "‖", lvert: "|", rvert: "|", ldots: "…", dots: "…", cdots: "⋯", in: "∈", log: "log", exp: "exp",
  min: "min", max: "max", varnothing: "∅", emptyset: "∅", top: "ᵀ", quad: " ", qquad: " ",
};
// accents written before their letter: \bar\alpha, \tilde{\mu}, \hat x
const SEARCH_MATHS_ACCENTS = { bar: "\u0304", overline: "\u0304", tilde: "\u0303", hat: "\u0302", dot: "\u0307" };

function plainTeX(tex) {
  let s = tex.replace(/^\s*(\\\(|\\\[|\$\$?)/, "").replace(/(\\\)|\\\]|\$\$?)\s*$/, "");
  s = s.replace(/\\(?:left|right|big|Big|bigg|Bigg)\b\s*/g, "");
  s = s.replace(/\\(?:mathbf|mathrm|mathcal|mathbb|boldsymbol|operatorname|text|textrm|textit)\s*\{([^{}]*)\}/g, "$1");
  s = s.replace(/\\(bar|overline|tilde|hat|dot)\s*(?:\{\s*(\\[A-Za-z]+|[A-Za-z0-9])\s*\}|(\\[A-Za-z]+|[A-Za-z0-9]))/g,
    (m, accent, inBraces, bare) => {
      const base = inBraces || bare;
      const letter = base.startsWith("\\") ? (SEARCH_MATHS_SYMBOLS[base.slice(1)] || base.slice(1)) : base;
      return letter + SEARCH_MATHS_ACCENTS[accent];
    });
  s = s.replace(/\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}/g, "($1)/($2)");
  s = s.replace(/\\sqrt\s*\{([^{}]*)\}/g, "√($1)");
  s = s.replace(/\\([A-Za-z]+)/g, (m, name) => (name in SEARCH_MATHS_SYMBOLS ? SEARCH_MATHS_SYMBOLS[name] : name));
  s = s.replace(/\\[,;:! ]/g, " ").replace(/\\\\/g, " ").replace(/\\([{}_%&#$|])/g, "$1");
  s = s.replace(/([_^])\{([^{}]*)\}/g, (m, op, body) => (body.trim().length > 1 ? `${op}(${body.trim()})` : op + body.trim()));
  return s.replace(/[{}]/g, "").replace(/\s+/g, " ").trim().normalize("NFC");
}

document.addEventListener("DOMContentLoaded", () => {
  if (typeof Search === "undefined" || typeof Search.htmlToText !== "function") return;
  const htmlToText = Search.htmlToText;
  Search.htmlToText = (htmlString, anchor) => {
    const doc = new DOMParser().parseFromString(htmlString, "text/html");
    doc.querySelectorAll(".math").forEach((el) => { el.textContent = plainTeX(el.textContent); });
    return htmlToText(doc.documentElement.outerHTML, anchor);
  };
  // The titles: searchtools.js writes each result's title as HTML, maths spans included. They are read the
  // same way, as soon as a result is added (a MutationObserver runs before MathJax could start on them).
  const results = document.getElementById("search-results");
  if (!results) return;
  new MutationObserver((records) => {
    for (const node of records.flatMap((r) => [...r.addedNodes])) {
      if (node.nodeType !== 1) continue;
      node.querySelectorAll(".math").forEach((el) => {
        if (!el.querySelector("mjx-container")) el.textContent = plainTeX(el.textContent);
      });
    }
  }).observe(results, { childList: true, subtree: true });
});
