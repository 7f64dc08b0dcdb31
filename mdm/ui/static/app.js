/* The admin UI's own script (no framework; htmx does the requests). Only what HTML cannot do alone:
   adding and removing repeated form rows (the policy form's beta programs). */
document.addEventListener("click", function (event) {
  var add = event.target.closest("#add-beta-program");
  if (add) {
    var template = document.getElementById("beta-row-template");
    var rows = document.getElementById("beta-rows");
    rows.appendChild(template.content.cloneNode(true));
    rows.lastElementChild.querySelector("input").focus();
    rows.dispatchEvent(new Event("change", {bubbles: true}));  // re-validate the form in place
    return;
  }
  var remove = event.target.closest(".remove-row");
  if (remove) {
    var row = remove.closest("tr");
    var body = row.parentNode;
    row.remove();
    body.dispatchEvent(new Event("change", {bubbles: true}));
  }
});
