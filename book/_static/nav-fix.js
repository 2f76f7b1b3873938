/*
 * nav-fix.js -- make the book theme's sidebar buttons work again (issue 25).
 *
 * WHAT IS BROKEN
 *   With pydata-sphinx-theme (PST) 0.17 under sphinx-book-theme (SBT) 1.3, a
 *   page can carry TWO buttons of each kind:
 *     - PST 0.17 puts its own ".primary-toggle" / ".secondary-toggle" in its
 *       top bar (#pst-header), which the book theme hides with CSS;
 *     - SBT puts the visible ones in the article header (.bd-header-article):
 *       the "chapter list" (fa-bars) and "page contents" (fa-list) buttons.
 *   Both themes wire up only the FIRST button of each kind in the document:
 *     - PST's setupMobileSidebarKeyboardHandlers() does
 *       document.querySelector(".primary-toggle") (and ".secondary-toggle")
 *       and opens the sidebar in a modal <dialog> (#pst-primary-sidebar-modal,
 *       #pst-secondary-sidebar-modal) on a click, below 992 px;
 *     - SBT's fixSidebarToggle() does the same, and at 992 px and wider turns
 *       the click into a toggle of the class "pst-sidebar-hidden" on
 *       #pst-primary-sidebar (which collapses it).
 *   When PST's top bar is there, the first button of each kind is PST's hidden
 *   one, so the visible buttons have no listener: on a phone the chapter list
 *   and the page contents cannot be opened (a tap shows only the tooltip), and
 *   on a desktop the chapter list cannot be collapsed.
 *   Upstream: https://github.com/pydata/pydata-sphinx-theme/issues/2451
 *             https://github.com/executablebooks/sphinx-book-theme/issues/988
 *
 * WHAT THIS DOES
 *   book/_config.yml already removes PST's top bar (html_theme_options:
 *   navbar_persistent: []), so in this book the visible buttons ARE the first
 *   ones and the themes' own code handles them; this file is then a no-op. It
 *   is the safety net for when the top bar comes back (a theme update, or the
 *   option dropped): a click on a sidebar button that no theme code handled --
 *   both themes' handlers call preventDefault() and stop the event, so an
 *   unhandled click is one that reaches the document with defaultPrevented
 *   still false -- is handed to the first button of the same kind, the one the
 *   themes listen to. The themes' own code then opens the dialog (phone) or
 *   collapses the sidebar (desktop), with their focus handling, Escape key and
 *   click-outside-to-close. Nothing is re-implemented here, and a click that
 *   the themes did handle is left alone, so this never toggles twice.
 *
 * WHEN TO REMOVE IT
 *   When the installed pydata-sphinx-theme / sphinx-book-theme pair wires up
 *   the visible buttons itself (the issues above fixed and released), or never
 *   renders hidden copies: drop this file and its html_js_files entry in
 *   book/_config.yml. The browser tests in tests/test_site.py
 *     test_phone_chapter_list_button_opens_and_closes_the_primary_sidebar,
 *     test_phone_page_contents_button_opens_and_closes_the_secondary_sidebar,
 *     test_desktop_sidebar_toggle_collapses_and_expands_the_primary_sidebar
 *   say whether navigation still works without it.
 */
(function () {
  "use strict";

  var KINDS = [".primary-toggle", ".secondary-toggle"];

  document.addEventListener("click", function (event) {
    // A click that a theme handler took is done (and usually never gets here).
    if (event.defaultPrevented || !(event.target instanceof Element)) {
      return;
    }
    for (var i = 0; i < KINDS.length; i++) {
      var clicked = event.target.closest(KINDS[i]);
      if (!clicked) {
        continue;
      }
      // The button the themes attached their listeners to.
      var wired = document.querySelector(KINDS[i]);
      if (wired && wired !== clicked) {
        event.preventDefault();
        wired.click();
      }
      return;
    }
  });
})();
