"""The report's stylesheet and its small table script (sort by a header click, filter rows)."""

CSS = """
:root{--ink:#1d2433;--muted:#5b6477;--line:#e3e6ec;--accent:#1f5fa8;--bg:#f7f8fa}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 Inter,'Helvetica Neue',Arial,sans-serif;color:var(--ink);
 background:var(--bg)}
header{background:#14213d;color:#fff;padding:26px 40px 22px}
header h1{margin:0 0 4px;font-size:26px;font-weight:600;letter-spacing:.2px}
header p{margin:2px 0;color:#c9d3e6}
header .headline{color:#fff;font-weight:500;margin-top:10px}
nav{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid var(--line);
 padding:6px 40px;display:flex;flex-wrap:wrap;gap:2px 18px}
nav a{color:var(--accent);text-decoration:none;font-size:14px;white-space:nowrap}
nav a:hover{text-decoration:underline}
main{max-width:1440px;margin:0 auto;padding:10px 40px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;margin:22px 0;
 padding:18px 26px 22px}
section h2{margin:0 0 8px;font-size:21px;font-weight:600}
section h3{margin:22px 0 8px;font-size:16px;font-weight:600;color:#2d3648}
p{margin:6px 0 10px}
.note,.missing{color:var(--muted);font-size:13px}
.missing{border-left:3px solid #e4572e;padding:4px 10px;background:#fff6f3}
.headline{font-size:16px;font-weight:600;color:#14213d}
.row{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.plot{width:100%;min-height:200px}
.tablewrap{max-height:460px;overflow:auto;border:1px solid var(--line);border-radius:6px;
 margin:6px 0}
.tfilter{position:sticky;left:0;margin:8px;padding:5px 9px;border:1px solid #c8ced9;
 border-radius:5px;width:260px;font:inherit;font-size:13px}
table.sortable{border-collapse:collapse;width:100%;font-size:13px}
table.sortable th{position:sticky;top:0;background:#eef1f6;text-align:left;padding:6px 9px;
 cursor:pointer;user-select:none;border-bottom:1px solid #cfd5df;white-space:nowrap}
table.sortable th:after{content:' \\2195';color:#9aa3b5;font-size:11px}
table.sortable th.asc:after{content:' \\2191';color:var(--ink)}
table.sortable th.desc:after{content:' \\2193';color:var(--ink)}
table.sortable td{padding:4px 9px;border-bottom:1px solid #f0f2f5;vertical-align:top}
table.sortable td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.sortable tr:hover td{background:#f6f9ff}
tr.good td{background:#f1faf3}tr.bad td{background:#fff3f0}
ul.sentences li{margin:4px 0}
.methods p{text-align:justify;max-width:1100px}
code{font:12.5px ui-monospace,Menlo,Consolas,monospace;background:#f1f3f7;padding:1px 4px;
 border-radius:3px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:16px}
.gallery figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:8px;
 background:#fff}
.gallery img{width:100%;height:auto;cursor:zoom-in}
.gallery img.big{position:fixed;inset:3%;width:94%;height:94%;object-fit:contain;
 background:#fff;z-index:100;box-shadow:0 0 0 100vmax rgba(0,0,0,.5);cursor:zoom-out}
.gallery figcaption{font-size:12px;color:var(--muted)}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px 0 30px}
@media (max-width:1000px){.row{grid-template-columns:1fr}main,header,nav{padding-left:14px;
 padding-right:14px}}
"""

#: Sort a table by clicking a header (numbers by their data-v value), filter with the box.
TABLE_JS = """
(function(){
function key(td){var v=td.getAttribute('data-v');
 return v===null?td.textContent.toLowerCase():(v===''?Infinity:parseFloat(v));}
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
  var asc=!th.classList.contains('asc');
  t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
  th.classList.add(asc?'asc':'desc');
  var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);
  rows.sort(function(r1,r2){var a=key(r1.cells[i]),c=key(r2.cells[i]);
   return (a<c?-1:a>c?1:0)*(asc?1:-1);});
  rows.forEach(function(r){b.appendChild(r);});});});});
document.querySelectorAll('input.tfilter').forEach(function(inp){
 inp.addEventListener('input',function(){var q=inp.value.toLowerCase();
  var t=inp.parentNode.querySelector('table');
  Array.prototype.forEach.call(t.tBodies[0].rows,function(r){
   r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});});});
document.querySelectorAll('.gallery img').forEach(function(img){
 img.addEventListener('click',function(){img.classList.toggle('big');});});
})();
"""
